"""Redis for the cluster, the Celery broker: `up_redis` starts Debian's redis-server on
its port with a password from a 0600 config file and waits until it answers a ping."""

from __future__ import annotations

import os
import shutil
from typing import Any

from shortlist.cluster.base import HOST
from shortlist.cluster.procs import wait
from shortlist.cluster.state import Cluster


def up_redis(c: Cluster, st: dict[str, Any], timeout: float) -> None:
    if c.record("redis"):
        return
    folder = c.dir / "redis"
    folder.mkdir(exist_ok=True)
    conf = folder / "redis.conf"  # the password in a 0600 file, not on the command line
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(
            f'bind {HOST}\nport {st["ports"]["redis"]}\ndir {folder}\nsave ""\n'
            f"appendonly no\nprotected-mode yes\ndaemonize no\n"
            f"requirepass {st['secrets']['redis']}\n"
        )
    proc = c._spawn(
        "redis", [shutil.which("redis-server") or "redis-server", str(conf)], dict(os.environ)
    )
    import redis

    client = redis.Redis(host=HOST, port=st["ports"]["redis"], password=st["secrets"]["redis"])
    wait("redis", client.ping, proc, c.log("redis"), timeout)
    client.close()
    print(f"redis         up: {c.urls(st)['redis']}", flush=True)
