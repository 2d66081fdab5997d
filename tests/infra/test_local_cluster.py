"""The scale-out stack, started for real by `infra/local-cluster` and stopped again.

PostgreSQL and Redis (Debian's packages), SeaweedFS for S3, MLflow on PostgreSQL with
its artifacts on S3, Airflow on PostgreSQL with the CeleryExecutor and two Celery
workers. `shortlist_retrain` is triggered through Airflow's REST API on the embedded
default data (MovieLens 100K when present, else the synthetic generator), imported into
s3://shortlist/data, with few epochs; it must succeed with its tasks run by the Celery
workers, the MLflow run recorded in the PostgreSQL store with its artifacts in the S3
bucket, the bundle and the live pointer on S3, and `dvc push` to the S3 remote must
work. `down` must then leave nothing the cluster started running.

Skipped (with the reason) only when PostgreSQL or Redis are not installed and the run
is not CI's: `.ci/run` installs both and sets SHORTLIST_REQUIRE_CLUSTER, so there a
missing binary fails the test instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from shortlist.cluster import Cluster, missing_binaries

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "local-cluster"
DAG = "shortlist_retrain"
# Few epochs: this test is about the topology; the model must still beat MostPopular.
OVERRIDES = [
    "towers.epochs=1",
    "towers.history_len=20",
    "towers.refit_on_validation=false",
    "ranker.epochs=1",
    "evaluation.baselines=[most_popular]",
    "canary.users=200",
    "promotion.auto_approve=true",
]


# Where MovieLens 100K is absent the demo's synthetic stand-in is generated instead, at
# this smaller size (the retrain is what is tested here, not the generator).
SYNTH = ["synth.users=2000", "synth.items=1000", "synth.interactions=60000"]


def _require_binaries() -> None:
    missing = missing_binaries()
    if not missing:
        return
    if os.environ.get("CI") or os.environ.get("SHORTLIST_REQUIRE_CLUSTER"):
        pytest.fail(f"the local cluster needs {', '.join(missing)} (CI installs them)")
    pytest.skip(f"local cluster not runnable here, missing: {', '.join(missing)}")


def _script(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _api(url: str, method: str = "GET", body: Any = None, token: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{method} {url}: {exc.code} {exc.read()[:500]!r}") from None


def _alive(pid: int) -> bool:
    """Whether pid runs (a zombie, exited but not reaped by its new parent, does not)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2 :].split()[0] != "Z"


@pytest.fixture(scope="module")
def cluster() -> Any:
    """The cluster, up; stopped (and its state dir removed) whatever the test did."""
    _require_binaries()
    # PostgreSQL runs as the `postgres` user under root: its state dir must be reachable
    # by others, which pytest's own 0700 temporary directories are not.
    state = Path(tempfile.mkdtemp(prefix="shortlist-cluster-"))
    state.chmod(0o711)
    started = time.monotonic()
    up = _script("up", "--state-dir", str(state))
    took = time.monotonic() - started
    try:
        assert up.returncode == 0, f"up failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
        c = Cluster(state)
        yield {"cluster": c, "state": c.state(), "up_s": took}
    finally:
        status = json.loads(_script("status", "--state-dir", str(state), "--json").stdout)
        before = status["processes"]
        down = _script("down", "--state-dir", str(state), "--json", timeout=600)
        still = [p for p in before if _alive(p)]
        shutil.rmtree(state, ignore_errors=True)
        assert down.returncode == 0, f"down failed:\n{down.stdout}\n{down.stderr}"
        assert before, "status listed no processes of the running cluster"
        assert still == [], f"left running after down: {still}"


def _ingest_default_data(c: Cluster, st: dict[str, Any], env: dict[str, str]) -> str:
    """The embedded default dataset (the demo's choice) into the params' data.dir on S3."""
    code = (
        "from pathlib import Path\n"
        "from shortlist.config import load_params\n"
        "from shortlist.demo import DEFAULT_DATASET, ingest_data\n"
        f"p = load_params({str(c.params_file())!r}, {SYNTH!r})\n"
        f"ds = Path({os.environ.get('SHORTLIST_ML100K', '')!r} or DEFAULT_DATASET)\n"
        "manifest, what = ingest_data(p, ds)\n"
        "print(what)\n"
    )
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-c", code],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def _task_logs(c: Cluster) -> str:
    """The ends of the most recent task logs (for a failure message)."""
    logs = sorted((c.airflow_home() / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-1500:]}" for p in logs[-3:])


def test_retrain_runs_on_celery_postgres_and_s3(
    cluster: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c: Cluster = cluster["cluster"]
    st = cluster["state"]
    env = _client_env(c, st)
    what = _ingest_default_data(c, st, env)
    run_id, tis, run_s = _trigger_and_wait(c, st)
    for name, value in env.items():  # MLflow and S3 clients of this process
        if name.startswith(("MLFLOW_TRACKING_", "AWS_")):
            monkeypatch.setenv(name, value)
    per_worker = _check_outputs(c, st, env, tis, tmp_path, what)
    print(
        f"\ncluster up {cluster['up_s']:.0f}s; retrain on {what}: {run_s:.0f}s; "
        f"tasks per worker {per_worker}"
    )


def _client_env(c: Cluster, st: dict[str, Any]) -> dict[str, str]:
    """This environment without Airflow/MLflow/AWS settings, plus the cluster's."""
    own = ("AIRFLOW", "MLFLOW_", "SHORTLIST_", "AWS_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(own)}, **c.client_env(st)}


def _trigger_and_wait(c: Cluster, st: dict[str, Any]) -> tuple[str, list[dict], float]:
    """Unpause and trigger the retrain through Airflow's REST API, as a person or another
    system would; wait for it to end. Returns (run id, task instances, seconds)."""
    urls = c.urls(st)
    password = c.airflow_password()
    assert password, "the api-server wrote no admin password"
    login = {"username": "admin", "password": password}
    token = _api(f"{urls['airflow']}/auth/token", "POST", login)["access_token"]
    api = f"{urls['airflow']}/api/v2"
    deadline = time.monotonic() + 300
    while True:  # the dag-processor parses dags/ shortly after start
        try:
            _api(f"{api}/dags/{DAG}", token=token)
            break
        except AssertionError:
            assert time.monotonic() < deadline, "shortlist_retrain never appeared in Airflow"
            time.sleep(3)
    _api(f"{api}/dags/{DAG}", "PATCH", {"is_paused": False}, token)
    body = {"logical_date": None, "conf": {"overrides": OVERRIDES}}
    run = _api(f"{api}/dags/{DAG}/dagRuns", "POST", body, token)
    run_id = run["dag_run_id"]
    run_url = f"{api}/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    started = time.monotonic()
    state = run["state"]
    while state not in ("success", "failed") and time.monotonic() < started + 1500:
        time.sleep(5)
        state = _api(run_url, token=token)["state"]
    run_s = time.monotonic() - started
    tis = _api(f"{run_url}/taskInstances", token=token)["task_instances"]
    summary = {t["task_id"]: (t["state"], t.get("hostname")) for t in tis}
    assert state == "success", f"run {state} after {run_s:.0f}s: {summary}\n{_task_logs(c)}"
    return run_id, tis, run_s


def _check_outputs(
    c: Cluster, st: dict[str, Any], env: dict[str, str], tis: list[dict], tmp: Path, what: str
) -> dict[str, int]:
    """Celery ran the tasks; MLflow's run is in PostgreSQL with artifacts on S3; bundle
    and live pointer on S3; `dvc push` to the S3 remote. Returns tasks per worker."""
    import boto3
    import mlflow
    import psycopg

    from shortlist.bundle.slots import Slots

    urls = c.urls(st)
    summary = {t["task_id"]: (t["state"], t.get("hostname"), t.get("queue")) for t in tis}
    ran = [t for t in tis if t["state"] == "success"]
    assert {t["task_id"] for t in ran} >= {"validate", "train_towers", "promote"}, summary
    # Every task that ran was executed by one of the Celery workers, and both took part.
    workers = ("worker-1", "worker-2")
    per_worker = {w: sum(t["hostname"].split(".", 1)[0] == w for t in ran) for w in workers}
    assert sum(per_worker.values()) == len(ran), f"tasks ran outside the workers: {summary}"
    assert all(per_worker.values()), f"a worker ran no task: {per_worker} {summary}"
    assert {t["queue"] for t in ran} == {"default"}, summary

    # MLflow: the champion version's run is in the PostgreSQL store; artifacts on S3.
    client = mlflow.MlflowClient(urls["mlflow"])
    params = _params(c)
    champion = client.get_model_version_by_alias(
        params["promotion"]["registered_model"], "champion"
    )
    assert client.get_run(champion.run_id).info.status == "FINISHED"
    db = {"user": "mlflow", "password": st["secrets"]["mlflow_db"], "dbname": "mlflow"}
    with psycopg.connect(host="127.0.0.1", port=st["ports"]["postgres"], **db) as conn:
        sql = "SELECT status FROM runs WHERE run_uuid = %s"
        stored = conn.execute(sql, (champion.run_id,)).fetchall()
    assert stored == [("FINISHED",)], "the run is not in MLflow's PostgreSQL store"
    s3 = boto3.client("s3", endpoint_url=urls["s3"])
    mlflow_keys = _keys(s3, "mlflow", "artifacts/")
    assert any(f"/{champion.run_id}/artifacts/" in k for k in mlflow_keys), mlflow_keys[:20]
    model_id = champion.source.rsplit("/", 1)[-1]  # models:/m-...: the logged bundle model
    assert any(f"/models/{model_id}/artifacts/" in k for k in mlflow_keys), mlflow_keys[:20]

    # Bundles and the live pointer on S3: the pointer names the champion's bundle, whose
    # manifest is in the live slot.
    pointer = Slots(params["bundle"]["root"]).read_pointer()
    assert pointer and pointer["bundle_id"] == champion.tags["bundle_id"], pointer
    bundle_keys = _keys(s3, "shortlist", "bundles/")
    assert "bundles/live.json" in bundle_keys, bundle_keys
    manifest = s3.get_object(
        Bucket="shortlist", Key=f"bundles/{pointer['live_slot']}/manifest.json"
    )
    assert json.loads(manifest["Body"].read())["bundle_id"] == pointer["bundle_id"]

    # DVC with the cluster's S3 remote: push a file and find it in the bucket.
    repo = tmp / "dvc-repo"
    repo.mkdir()
    denv = {**env, "DVC_NO_ANALYTICS": "1", "HOME": str(tmp)}
    dvc = str(REPO / ".venv" / "bin" / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(cmd, cwd=repo, env=denv, check=True, capture_output=True)
    (repo / "champion.json").write_text(json.dumps({"bundle": pointer["bundle_id"], "data": what}))
    subprocess.run(
        [dvc, "add", "champion.json"], cwd=repo, env=denv, check=True, capture_output=True
    )
    remote = _script("dvc-remote", str(repo), "--state-dir", str(c.dir))
    assert remote.returncode == 0, remote.stderr
    push = subprocess.run([dvc, "push"], cwd=repo, env=denv, capture_output=True, text=True)
    assert push.returncode == 0, push.stdout + push.stderr
    assert _keys(s3, "shortlist", "dvc/"), "dvc push wrote nothing to s3://shortlist/dvc"
    return per_worker


def _params(c: Cluster) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(c.params_file().read_text())


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys
