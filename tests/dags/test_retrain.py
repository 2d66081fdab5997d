"""The retrain, reembed and canary DAGs, run for real with `airflow dags test`.

One scenario on ml-100k (few epochs), against the session's real MLflow server, in
order: a first model is approved by moving `champion` exactly as the MLflow UI does
(client alias move) and goes live; a deliberately worse challenger is NOT_BLESSED and
changes nothing; corrupted data stops at validation; a run killed during the index
build and re-run rebuilds the idle slot without a duplicate registry version, and its
approval times out without touching production; the reembed DAG changes the bundle but
not the model version; the canary DAG rolls back after repeated breaches.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pipelines import ingest
from shortlist.bundle.slots import Slots
from shortlist.config import load_params
from shortlist.demo import absolute_paths
from tests.dags.airflow_helpers import BIN, dags_test, migrate, output

pytestmark = [pytest.mark.slow, pytest.mark.servers]

MODEL = "shortlist-bundle-test"


class World:
    """The shared state of the scenario: paths, env, and helpers to inspect it."""

    def __init__(self, tmp: Path, mlflow_url: str, ml100k: Path, base_params) -> None:
        self.tmp = tmp
        self.params_file = tmp / "params.yaml"
        self.params = absolute_paths(base_params, tmp).with_overrides(
            {
                "data.path": str(ml100k),
                # few epochs, one thread: these tests are about the workflow, yet the
                # model must still honestly beat MostPopular to be blessed
                "towers.epochs": 3,
                "towers.history_len": 20,
                "towers.threads": 1,
                "towers.refit_on_validation": False,
                "ranker.threads": 1,
                "ranker.epochs": 1,
                "evaluation.baselines": ["most_popular"],
                "canary.users": 200,
                "promotion.registered_model": MODEL,
                "promotion.poll_seconds": 1,
                "promotion.approval_timeout_seconds": 600,
                "mlflow.tracking_uri": mlflow_url,
            }
        )
        self.params_file.write_text(yaml.safe_dump(self.params.model_dump(), sort_keys=False))
        self.env = migrate(tmp / "airflow")
        self.env.update(SHORTLIST_PARAMS=str(self.params_file), MLFLOW_TRACKING_URI=mlflow_url)
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # basic-auth
            if name in os.environ:
                self.env[name] = os.environ[name]
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_url
        ingest.run(
            self.params, source="movielens-100k", path=str(ml100k), out_dir=self.params.data.dir
        )
        self.slots = Slots(self.params.bundle.root)

    def conf(self, *overrides: str) -> dict:
        return {"params_file": str(self.params_file), "overrides": list(overrides)}

    def client(self):
        import mlflow

        mlflow.set_tracking_uri(self.params.mlflow.tracking_uri)
        return mlflow.MlflowClient()

    def versions(self) -> list:
        try:
            return self.client().search_model_versions(f"name='{MODEL}'")
        except Exception:
            return []

    def alias(self, name: str):
        try:
            return self.client().get_model_version_by_alias(MODEL, name)
        except Exception:
            return None

    def start(self, dag_id: str, date: str, conf: dict) -> subprocess.Popen:
        """`airflow dags test` in the background; its output goes to a file (a pipe nobody
        reads while the test waits would fill up and block the run)."""
        log = self.tmp / f"{dag_id}-{date[:10]}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [str(BIN / "airflow"), "dags", "test", dag_id, date, "-c", json.dumps(conf)],
                env=self.env,
                cwd=self.env["AIRFLOW_HOME"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc.log = log
        return proc


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_server, ml100k_path):  # noqa: ANN001, ANN201
    base = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    before = os.environ.get("MLFLOW_TRACKING_URI")
    w = World(tmp_path_factory.mktemp("retrain"), mlflow_server.url, ml100k_path, base)
    yield w
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def _wait_for(predicate, timeout: float, proc: subprocess.Popen, what: str, every: float = 1.0):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"run ended before {what}:\n{proc.log.read_text()[-6000:]}")
        time.sleep(every)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def test_first_model_is_approved_in_mlflow_and_goes_live(world: World) -> None:
    assert world.slots.read_pointer() is None
    proc = world.start("shortlist_retrain", "2024-02-01T00:00:00+00:00", world.conf())
    challenger = _wait_for(lambda: world.alias("challenger"), 900, proc, "a challenger")
    assert world.alias("champion") is None
    tags = challenger.tags
    assert tags["blessed"] == "true" and tags["canary_passed"] == "true"
    assert (
        "awaits approval" in challenger.description and "add `champion`" in challenger.description
    )
    # A person approves in the UI: the UI moves the alias through this same API call.
    world.client().set_registered_model_alias(MODEL, "champion", challenger.version)
    proc.wait(timeout=900)
    assert proc.returncode == 0, proc.log.read_text()[-6000:]
    pointer = world.slots.read_pointer()
    assert pointer["bundle_id"] == tags["bundle_id"]
    approved = world.client().get_model_version(MODEL, challenger.version)
    assert approved.tags["approved_by"].startswith("mlflow-ui: an account granted EDIT")
    assert "approved by mlflow-ui" in approved.description
    assert world.alias("challenger") is None, "promotion leaves no stale challenger alias"

    from fastapi.testclient import TestClient

    from shortlist.serving.app import create_app

    with TestClient(create_app(world.params, root=world.params.bundle.root)) as api:
        deadline = time.monotonic() + 300  # the bundle loads in the background
        while api.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert api.get("/version").json()["bundle_id"] == pointer["bundle_id"]
        answer = api.post("/recommend", json={"user_id": "1", "k": 5}).json()
        assert answer["bundle_id"] == pointer["bundle_id"] and len(answer["items"]) == 5


def test_worse_challenger_is_not_blessed_and_nothing_changes(world: World) -> None:
    pointer = world.slots.read_pointer()
    versions = len(world.versions())
    conf = world.conf("towers.epochs=1", "towers.learning_rate=0.00001", "ranker.epochs=1")
    proc = dags_test(world.env, "shortlist_retrain", conf, "2024-02-08T00:00:00+00:00")
    assert proc.returncode == 0, output(proc)
    assert "NOT_BLESSED" in proc.stdout + proc.stderr or _verdict(world, "20240208") == (
        "NOT_BLESSED"
    )
    assert world.slots.read_pointer() == pointer
    assert len(world.versions()) == versions


def _verdict(world: World, key: str) -> str:
    path = Path(world.params.project.work_dir) / "runs" / f"{key}T000000" / "eval"
    return json.loads((path / "blessing.json").read_text())["verdict"]


def test_corrupted_data_stops_at_validation(world: World) -> None:
    import pandas as pd

    pointer = world.slots.read_pointer()
    versions = len(world.versions())
    bad = world.tmp / "bad-data"
    shutil.copytree(world.params.data.dir, bad)
    table = pd.read_parquet(bad / "interactions.parquet")
    table.loc[table.index[:10], "weight"] = -1.0
    table.to_parquet(bad / "interactions.parquet", index=False)
    proc = dags_test(
        world.env, "shortlist_retrain", world.conf(f"data.dir={bad}"), "2024-02-15T00:00:00+00:00"
    )
    assert proc.returncode != 0, output(proc)
    assert not (Path(world.params.project.work_dir) / "runs" / "20240215T000000").exists()
    assert world.slots.read_pointer() == pointer
    assert len(world.versions()) == versions


def test_killed_build_then_rerun_and_approval_timeout(world: World) -> None:
    pointer = world.slots.read_pointer()
    versions = {v.tags.get("bundle_id") for v in world.versions()}
    idle = world.slots.slot_location(world.slots.idle_slot())
    date = "2024-02-22T00:00:00+00:00"
    # Same data, same seed: the challenger equals the champion, so this run tolerates a
    # tie (a relative margin of -5% over the champion) to get as far as the build.
    tie = "evaluation.min_relative_gain_over_champion=-0.05"
    proc = world.start("shortlist_retrain", date, world.conf(tie))

    def building() -> bool:  # index files appear in the idle slot before its manifest
        return Path(idle).exists() and any(Path(idle).rglob("*.safetensors"))

    _wait_for(building, 900, proc, "the index build", every=0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (Path(idle) / "manifest.json").exists(), "kill came too late to test anything"
    assert world.slots.read_pointer() == pointer

    rerun = dags_test(
        world.env,
        "shortlist_retrain",
        world.conf(tie, "promotion.approval_timeout_seconds=3"),
        "2024-02-23T00:00:00+00:00",
    )
    assert rerun.returncode == 0, output(rerun)
    assert (Path(idle) / "manifest.json").exists(), "the idle slot was not rebuilt"
    assert world.slots.read_pointer() == pointer, "an unapproved bundle went live"
    after = [v.tags.get("bundle_id") for v in world.versions()]
    assert len(after) == len(set(after)), "a bundle was registered twice"
    assert len(set(after) - versions) == 1
    assert world.alias("champion").tags["bundle_id"] == pointer["bundle_id"]


def test_champion_on_an_unblessed_version_is_refused(world: World) -> None:
    from pipelines import release
    from shortlist.errors import PromotionRefused

    pointer = world.slots.read_pointer()
    challenger = world.alias("challenger")
    client = world.client()
    client.set_model_version_tag(MODEL, challenger.version, "blessed", "false")
    client.set_registered_model_alias(MODEL, "champion", challenger.version)
    with pytest.raises(PromotionRefused, match="not blessed"):
        release.promote_approved(world.params, version=challenger.version)
    assert world.slots.read_pointer() == pointer
    # restore the registry to the live bundle for the next steps
    live = release.registry.find_version(world.params, pointer["bundle_id"])
    client.set_registered_model_alias(MODEL, "champion", live.version)


def test_reembed_keeps_the_model_version_and_changes_the_bundle(world: World) -> None:
    before = world.slots.read_pointer()
    champion = world.alias("champion")
    live_manifest = world.slots.manifest(before["live_slot"])
    proc = dags_test(world.env, "shortlist_reembed", world.conf(), "2024-03-01T00:00:00+00:00")
    assert proc.returncode == 0, output(proc)
    after = world.slots.read_pointer()
    assert after["bundle_id"] != before["bundle_id"]
    new_manifest = world.slots.manifest(after["live_slot"])
    assert new_manifest["model_fingerprint"] == live_manifest["model_fingerprint"]
    assert world.alias("champion").version == champion.version
    tagged = world.client().get_model_version(MODEL, champion.version)
    assert tagged.tags["reembedded_bundle_id"] == after["bundle_id"]


def test_canary_dag_rolls_back_after_two_breaches(world: World) -> None:
    before = world.slots.read_pointer()
    # The live index file is damaged (a bad disk, a partial sync): the canary refuses to
    # load it. The first breach only counts; the second in a row rolls back to the
    # previous bundle, still intact in the other slot, and fails the run (the alert).
    live = Path(world.slots.slot_location(before["live_slot"]))
    index = next(p for p in live.rglob("*") if p.suffix in {".faiss", ".index"})
    with open(index, "ab") as fh:
        fh.write(b"corrupted")
    first = dags_test(world.env, "shortlist_canary", world.conf(), "2024-03-02T00:00:00+00:00")
    assert first.returncode == 0, output(first)
    assert world.slots.read_pointer()["bundle_id"] == before["bundle_id"]
    second = dags_test(world.env, "shortlist_canary", world.conf(), "2024-03-02T01:00:00+00:00")
    assert second.returncode != 0, output(second)
    after = world.slots.read_pointer()
    assert after["bundle_id"] == before["previous_bundle_id"]
    # the previous bundle is the first model's own: `champion` names its version again
    assert world.alias("champion").tags["bundle_id"] == after["bundle_id"]
