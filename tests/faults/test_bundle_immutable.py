"""Fault: the files of the live bundle are changed in place while it serves.

Reproduced against a real `shortlist serve`: one row of the live `item_embeddings.npy`
overwritten in place with another item's vector, another with NaN, then an in-place
`cp` of the other bundle's embeddings over the live file (same inode, as `cp` and
`rsync --inplace` write). Safe outcome: answers do not change (serving holds the bytes it
verified, never a memory map), the change is detected and reported on `/version`, and a
fresh server refuses the changed bundle naming the file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.bundle.helpers import make_shop

pytestmark = pytest.mark.slow


@pytest.fixture
def shop(tmp_path_factory, tmp_path):
    return make_shop(tmp_path_factory.getbasetemp() / "faults-template", tmp_path)


def similar(server, item: str) -> list[tuple[str, float]]:
    resp = server.get(f"/similar-items/{item}?k=10")
    assert resp.status_code == 200, resp.text
    return [(i["item_id"], round(i["score"], 6)) for i in resp.json()["items"]]


def test_in_place_writes_to_the_live_bundle_change_no_answer_and_are_reported(shop):
    a = shop.pointer()["bundle_id"]
    live = Path(shop.root) / "blue"
    server = shop.serve()
    fresh = None
    try:
        server.wait_up()
        server.wait_for(lambda: server.serving() == a, what=f"serving {a}")
        probes = ["i0", "i49", "i180"]
        before = {item: similar(server, item) for item in probes}
        assert all(len(v) == 10 for v in before.values())
        inode = (live / "item_embeddings.npy").stat().st_ino

        emb = np.load(live / "item_embeddings.npy", mmap_mode="r+")
        emb[0] = emb[100]  # item "i0" now looks like another item
        emb[49] = np.nan  # item "i49" is poisoned
        emb.flush()
        del emb
        server.wait_for(
            lambda: "item_embeddings.npy" in (server.get("/version").json()["last_error"] or ""),
            what="the change reported",
        )
        assert {item: similar(server, item) for item in probes} == before

        other = Path(shop.root) / "green" / "item_embeddings.npy"
        subprocess.run(["cp", str(other), str(live / "item_embeddings.npy")], check=True)
        assert (live / "item_embeddings.npy").stat().st_ino == inode  # written in place
        assert {item: similar(server, item) for item in probes} == before
        version = server.get("/version").json()
        assert (
            version["bundle_id"] == a and "still serving the verified copy" in version["last_error"]
        )

        fresh = shop.serve("fresh")
        fresh.wait_up()
        fresh.wait_for(
            lambda: "item_embeddings.npy" in fresh.get("/ready").json().get("detail", ""),
            what="the fresh server's refusal",
        )
        assert fresh.get("/ready").status_code == 503
        assert "tampered" in fresh.get("/ready").json()["detail"]
    finally:
        server.stop()
        if fresh is not None:
            fresh.stop()
