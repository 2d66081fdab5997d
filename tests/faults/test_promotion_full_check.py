"""Fault: a file of a bundle disappears after its canary passed, before or after promotion.

Reproduced with the real command line and real `shortlist serve` processes. Safe outcome:
`shortlist promote` verifies the whole bundle and refuses (exit 1, the file named) with
the pointer unchanged; a bundle damaged after going live keeps being served from the
verified copy in memory by a running server, which reports the damage; a fresh server
stays not ready with a message naming the file until the pointer names an intact bundle
(then it serves it), and `shortlist status` lists every disagreement.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bundle.helpers import make_shop

pytestmark = pytest.mark.slow


@pytest.fixture
def shop(tmp_path_factory, tmp_path):
    return make_shop(tmp_path_factory.getbasetemp() / "faults-template", tmp_path)


def test_promote_refuses_a_bundle_missing_a_file_after_its_canary(shop):
    a = shop.pointer()["bundle_id"]
    server = shop.serve()
    try:
        server.wait_up()
        server.wait_for(lambda: server.serving() == a, what=f"serving {a}")
        idle = Path(shop.root) / "green"
        (idle / "popularity.npy").unlink()  # after the canary passed

        refused = shop.cli("promote", "--root", shop.root, check=False)
        assert "popularity.npy is missing" in refused.stderr
        assert shop.pointer()["bundle_id"] == a  # nothing moved
        assert server.serving() == a and server.get("/version").json()["last_error"] is None

        shown = json.loads(
            shop.cli("status", "--root", shop.root, "--json", "--server", server.url).stdout
        )
        assert shown["live"]["bundle_id"] == a and shown["servers"][0]["bundle_id"] == a
        assert shown["idle"]["files_problem"] == "popularity.npy is missing"
        assert shown["idle"]["canary"]["stale"] is True  # its PASSED no longer vouches
        assert shown["disagreements"] == []
        text = shop.cli("status", "--root", shop.root, "--server", server.url).stdout
        assert "idle: slot=green" in text and "DAMAGED: popularity.npy is missing" in text
    finally:
        server.stop()


def test_live_bundle_losing_a_file_keeps_serving_and_a_fresh_server_names_it(shop):
    a = shop.pointer()["bundle_id"]
    b = json.loads(shop.cli("promote", "--root", shop.root, check=True).stdout)["bundle_id"]
    assert b != a
    running = shop.serve("running")
    fresh = None
    try:
        running.wait_up()
        running.wait_for(lambda: running.serving() == b, what=f"serving {b}")
        (Path(shop.root) / "green" / "popularity.npy").unlink()  # the live slot

        # The running server keeps the verified bundle and says what happened.
        running.wait_for(
            lambda: (
                "popularity.npy is missing" in (running.get("/version").json()["last_error"] or "")
            ),
            what="the damage reported",
        )
        assert running.serving() == b
        assert running.post("/recommend", {"user_id": "u1", "k": 5}).json()["bundle_id"] == b

        # A fresh server cannot verify it: not ready, and it says which file.
        fresh = shop.serve("fresh")
        fresh.wait_up()
        fresh.wait_for(
            lambda: "popularity.npy" in fresh.get("/ready").json().get("detail", ""),
            what="the refusal",
        )
        assert fresh.get("/ready").status_code == 503

        checked = shop.cli(
            "status",
            "--root",
            shop.root,
            "--json",
            "--check",
            "--server",
            running.url,
            "--server",
            fresh.url,
            check=False,
        )
        problems = "\n".join(json.loads(checked.stdout)["disagreements"])
        assert f"live bundle {b} is damaged: popularity.npy is missing" in problems
        assert f"server {fresh.url} serves nothing" in problems
        assert f"server {running.url} reports" in problems

        # Not 503 forever: the intact previous bundle goes live by rollback, both serve it.
        shop.cli("rollback", "--root", shop.root, "--expect-live", b, check=True)
        fresh.wait_for(lambda: fresh.serving() == a, what=f"fresh server serving {a}")
        running.wait_for(lambda: running.serving() == a, what=f"running server serving {a}")
        shown = json.loads(
            shop.cli(
                "status",
                "--root",
                shop.root,
                "--json",
                "--server",
                running.url,
                "--server",
                fresh.url,
            ).stdout
        )
        assert shown["disagreements"] == [], shown["disagreements"]
    finally:
        running.stop()
        if fresh is not None:
            fresh.stop()
