"""Huge pages for randomly accessed tables: the same values, and (where the kernel allows
transparent huge pages) memory actually backed by 2 MiB pages."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from shortlist.models.huge_pages import (
    HUGE_PAGE,
    MIN_BYTES,
    advise_huge_pages,
    to_huge_pages,
    zeros_in_huge_pages,
)

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_mode() -> str | None:
    """The kernel's transparent huge page mode (the bracketed word), None without THP."""
    if not sys.platform.startswith("linux") or not THP.exists():
        return None
    text = THP.read_text()
    return text[text.index("[") + 1 : text.index("]")]


def huge_bytes(t: torch.Tensor) -> int:
    """Bytes of the mappings holding `t`'s memory that are backed by anonymous huge pages
    (/proc/self/smaps)."""
    start = t.untyped_storage().data_ptr()
    end = start + t.untyped_storage().nbytes()
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo < end and hi > start
        elif inside and head == "AnonHugePages:":
            total += int(line.split()[1]) * 1024
    return total


def test_copy_keeps_values_shape_and_dtype():
    t = torch.randn(MIN_BYTES // 256 + 7, 64)
    out = to_huge_pages(t)
    assert out.shape == t.shape and out.dtype == t.dtype and out.is_contiguous()
    assert torch.equal(out, t)


def test_small_tensors_come_back_as_they_are():
    small = torch.randn(10, 4)
    assert to_huge_pages(small) is small
    z = zeros_in_huge_pages((3, 5), dtype=torch.float64)
    assert z.dtype == torch.float64 and z.shape == (3, 5) and not z.any()


@pytest.mark.skipif(_thp_mode() in (None, "never"), reason="kernel without transparent huge pages")
def test_an_advised_table_is_backed_by_huge_pages():
    """Advised before its first touch, a 64 MiB table gets 2 MiB pages for most of its
    whole aligned 2 MiB ranges (the kernel may fall back to small pages where memory is
    fragmented); a plain torch allocation of that size gets none where the kernel gives
    huge pages only on advice."""
    n_bytes = 64 << 20
    t = zeros_in_huge_pages((n_bytes // 4,), dtype=torch.float32)
    assert huge_bytes(t) >= n_bytes // 2
    if _thp_mode() == "madvise":
        plain = torch.zeros(n_bytes // 4)
        assert huge_bytes(plain) == 0
        assert huge_bytes(to_huge_pages(plain)) >= n_bytes // 2


def test_advice_is_refused_where_nothing_is_gained():
    assert not advise_huge_pages(torch.zeros(16))
    if _thp_mode() is not None:
        assert advise_huge_pages(torch.zeros(MIN_BYTES // 4 + HUGE_PAGE))
