"""Fault: rollback as a toggle, concurrent rollbacks, and a slow canary racing a person.

Through the real command line. Safe outcome: a second `shortlist rollback` is refused
and the bad bundle never comes back (nor by `shortlist promote`); of two rollbacks run
at the same moment exactly one succeeds, every time; the scheduled canary's rollback
names the bundle it measured and does nothing once a person has acted in between.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.bundle.helpers import make_shop

pytestmark = pytest.mark.slow


@pytest.fixture
def shop(tmp_path_factory, tmp_path):
    return make_shop(tmp_path_factory.getbasetemp() / "faults-template", tmp_path)


def test_rollback_twice_never_puts_the_bad_bundle_back(shop):
    a = shop.pointer()["bundle_id"]
    b = json.loads(shop.cli("promote", "--root", shop.root, check=True).stdout)["bundle_id"]
    back = json.loads(shop.cli("rollback", "--root", shop.root, check=True).stdout)
    assert back["bundle_id"] == a and back["rolled_back_from"] == b
    again = shop.cli("rollback", "--root", shop.root, check=False)
    assert f"reached by rolling back {b}" in again.stderr
    assert "was rolled back" in shop.cli("promote", "--root", shop.root, check=False).stderr
    wrong = shop.cli("rollback", "--root", shop.root, "--expect-live", b, check=False)
    assert f"the live bundle is {a}, not {b}" in wrong.stderr
    assert shop.pointer()["bundle_id"] == a


def test_two_rollbacks_at_once_exactly_one_wins(shop):
    import shutil
    from pathlib import Path

    template = Path(shop.root).parent / "template-bundles"
    shutil.copytree(shop.root, template)
    a = shop.pointer()["bundle_id"]
    shop.cli("promote", "--root", shop.root, check=True)
    b = shop.pointer()["bundle_id"]
    promoted = Path(shop.root) / "live.json"
    promoted_pointer = promoted.read_bytes()
    for _ in range(5):
        promoted.write_bytes(promoted_pointer)  # B live again, A the previous bundle
        cmd = [sys.executable, "-m", "shortlist", "rollback", "--root", shop.root]
        cmd += ["--params", str(shop.params_file)]
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        results = [(p.wait(300), p.stderr.read()) for p in procs]
        codes = sorted(code for code, _ in results)
        assert codes == [0, 1], results
        assert shop.pointer()["bundle_id"] == a and shop.pointer()["rolled_back_from"] == b
    shutil.rmtree(template)


def test_slow_canary_never_undoes_what_a_person_did_meanwhile(shop, monkeypatch):
    """The live canary measures B (it breaches); while it runs, a person rolls back to A
    and promotes a new bundle C. The canary's rollback of B must change nothing."""
    from pathlib import Path

    from pipelines import canary, monitor
    from shortlist.config import load_params

    params = load_params(shop.params_file).with_overrides({"canary.breaches_before_rollback": 1})
    shop.cli("promote", "--root", shop.root, check=True)
    b = shop.pointer()["bundle_id"]
    with open(Path(shop.root) / "green" / "index.faiss", "ab") as fh:
        fh.write(b"damaged")  # B breaches: its index no longer verifies
    real_run = canary.run
    person: dict = {}

    def slow_check(params, *, root=None, slot="idle"):
        report = real_run(params, root=root, slot=slot)  # measures B
        # ... meanwhile, a person acts: roll B back, build and promote a new bundle C.
        shop.cli("rollback", "--root", shop.root, "--expect-live", b, check=True)
        built = shop.cli("build-bundle", shop.models[1], "--data", shop.data, "--root", shop.root)
        person["c"] = built.stdout.strip().splitlines()[-1]
        shop.cli("canary", "--root", shop.root, check=True)
        shop.cli("promote", "--root", shop.root, "--bundle", person["c"], check=True)
        return report

    monkeypatch.setattr(canary, "run", slow_check)
    report = monitor.run(params, root=shop.root)
    assert report["bundle_id"] == b and not report["passed"] and report["breaches"] == 1
    assert report["rolled_back"] is False
    assert f"the live bundle is {person['c']}, not {b}" in report["rollback_refused"]
    assert shop.pointer()["bundle_id"] == person["c"]  # what the person did stands
