"""Large CPU tensors placed in transparent huge pages (2 MiB), for tables read and written
at random rows.

A sparse table's step gathers and writes back a few thousand rows scattered over tables of
tens to hundreds of MiB (weights, Adam moments, their average): with 4 KiB pages nearly
every row is a TLB miss, and in a virtual machine a miss walks two page tables. Linux
backs a range with huge pages on its first touch where the range is advised so
(`madvise(MADV_HUGEPAGE)`), which is what kernels set to `madvise` (a common default)
require; under `always` the advice changes nothing, under `never` it is ignored.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable, Sequence

import torch

HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14  # <sys/mman.h>, Linux
#: Smaller tensors stay where they are: a few whole huge pages at most to gain.
MIN_BYTES = 4 * HUGE_PAGE


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def advise_huge_pages(t: torch.Tensor) -> bool:
    """Advise the kernel to back the whole 2 MiB pages inside `t`'s memory with huge
    pages; pages already touched keep their 4 KiB pages. True where the advice was taken
    (Linux, a CPU tensor of at least MIN_BYTES)."""
    madvise = _madvise()
    nbytes = t.untyped_storage().nbytes()
    if madvise is None or t.device.type != "cpu" or nbytes < MIN_BYTES:
        return False
    start = t.untyped_storage().data_ptr()
    first = -(-start // HUGE_PAGE) * HUGE_PAGE
    last = (start + nbytes) // HUGE_PAGE * HUGE_PAGE
    if last <= first:
        return False
    return madvise(first, last - first, _MADV_HUGEPAGE) == 0


def empty_in_huge_pages(
    shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """An uninitialised tensor, advised into huge pages before anything touches it (see
    `advise_huge_pages`; elsewhere a plain `torch.empty`)."""
    t = torch.empty(tuple(shape), dtype=dtype, device=device)
    advise_huge_pages(t)
    return t


def zeros_in_huge_pages(
    shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """`torch.zeros` in huge pages (see `empty_in_huge_pages`)."""
    return empty_in_huge_pages(shape, dtype=dtype, device=device).zero_()


def to_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of `t` in huge pages, or `t` itself where there is nothing to
    gain (not on Linux's CPU, or smaller than MIN_BYTES)."""
    if _madvise() is None or t.device.type != "cpu" or t.nbytes < MIN_BYTES:
        return t
    return empty_in_huge_pages(t.shape, dtype=t.dtype).copy_(t)
