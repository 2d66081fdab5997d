"""S3 for the cluster: `up_s3` starts SeaweedFS (`weed mini`) on its ports and creates
the data and MLflow buckets; `s3_client` is a boto3 client with the cluster's keys."""

from __future__ import annotations

import os
from typing import Any

from shortlist.cluster.base import (
    BIN,
    DATA_BUCKET,
    HOST,
    MLFLOW_BUCKET,
    S3_ACCESS_KEY,
    S3_REGION,
)
from shortlist.cluster.procs import wait
from shortlist.cluster.state import Cluster


def s3_client(c: Cluster, st: dict[str, Any]) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=c.urls(st)["s3"],
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=st["secrets"]["s3_secret_key"],
        region_name=S3_REGION,
        config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2}),
    )


def up_s3(c: Cluster, st: dict[str, Any], timeout: float) -> None:
    if c.record("s3"):
        return
    p = st["ports"]
    data = c.dir / "s3"
    data.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": st["secrets"]["s3_secret_key"],
    }
    cmd = [
        str(BIN / "weed"),
        "mini",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        f"-s3.port={p['s3']}",
        f"-s3.port.grpc={p['s3_grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-master.port={p['master']}",
        f"-master.port.grpc={p['master_grpc']}",
        f"-volume.port={p['volume']}",
        f"-volume.port.grpc={p['volume_grpc']}",
        f"-filer.port={p['filer']}",
        f"-filer.port.grpc={p['filer_grpc']}",
        f"-admin.port={p['admin']}",
        f"-admin.port.grpc={p['admin_grpc']}",
        f"-filer.localSocket={data / 'filer.sock'}",
        f"-s3.localSocket={data / 's3.sock'}",
    ]
    proc = c._spawn("s3", cmd, env)
    client = s3_client(c, st)
    wait("s3 (weed mini)", lambda: client.list_buckets() is not None, proc, c.log("s3"), timeout)
    have = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in (DATA_BUCKET, MLFLOW_BUCKET):
        if bucket not in have:
            client.create_bucket(Bucket=bucket)
    print(
        f"s3            up: {c.urls(st)['s3']} (buckets {DATA_BUCKET}, {MLFLOW_BUCKET})", flush=True
    )
