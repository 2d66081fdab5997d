"""The test servers themselves: reachable, isolated, and usable by the real clients."""

from __future__ import annotations

import os
from pathlib import Path

from tests.servers import free_port_pair, free_ports


def test_free_ports_are_distinct() -> None:
    ports = free_ports(16)
    assert len(set(ports)) == 16
    low, high = free_port_pair(10_000)
    assert high == low + 10_000


def test_mlflow_server_records_runs_and_proxied_artifacts(mlflow_tracking, tmp_path: Path) -> None:  # noqa: ANN001
    import mlflow

    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_tracking.url
    client = mlflow.MlflowClient(mlflow_tracking.url)
    exp = client.create_experiment(f"servers-{tmp_path.name}")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "m", 0.5)
    note = tmp_path / "note.txt"
    note.write_text("hello")
    client.log_artifact(run.info.run_id, str(note))
    assert client.get_run(run.info.run_id).data.metrics == {"m": 0.5}
    # artifacts travel over HTTP to the server's destination directory
    stored = list(mlflow_tracking.artifacts_dir.rglob("note.txt"))
    assert [p.read_text() for p in stored] == ["hello"]


def test_s3_fixture_sets_environment(s3) -> None:  # noqa: ANN001
    assert os.environ["AWS_ENDPOINT_URL_S3"] == s3.endpoint_url
    assert s3.endpoint_url.startswith("http://127.0.0.1:")
    bucket = s3.new_bucket()
    s3.client().put_object(Bucket=bucket, Key="k", Body=b"v")
    names = [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
    assert bucket in names
