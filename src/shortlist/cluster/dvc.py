"""`dvc_remote`: point a DVC repository at the cluster's S3 remote, the endpoint and
credentials in its uncommitted .dvc/config.local."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from shortlist.cluster.base import BIN, DATA_BUCKET, S3_ACCESS_KEY, S3_REGION, ClusterError
from shortlist.cluster.state import Cluster


def dvc_remote(state_dir: str | Path, repo: str | Path, name: str = "cluster") -> str:
    """Point the DVC repository at `repo` at the cluster's S3 remote (default remote);
    the endpoint and credentials go to its .dvc/config.local, never to the committed
    config. Returns the remote's URL."""
    c = Cluster(state_dir)
    st = c.state()
    url = f"s3://{DATA_BUCKET}/dvc"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = str(BIN / "dvc")
    steps = [
        [dvc, "remote", "add", "--default", "--force", name, url],
        [dvc, "remote", "modify", "--local", name, "endpointurl", c.urls(st)["s3"]],
        [dvc, "remote", "modify", "--local", name, "access_key_id", S3_ACCESS_KEY],
        [
            dvc,
            "remote",
            "modify",
            "--local",
            name,
            "secret_access_key",
            st["secrets"]["s3_secret_key"],
        ],
        [dvc, "remote", "modify", "--local", name, "region", S3_REGION],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ClusterError(f"{' '.join(cmd[:4])} failed: {proc.stderr.strip()}")
    return url
