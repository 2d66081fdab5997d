"""PostgreSQL for the cluster: Debian's server binaries (`pg_bin`), run as the `postgres`
user under root; `up_postgres` initialises <state>/postgres once, starts the server and
creates the airflow, mlflow and mlflow_auth databases with their roles."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from shortlist.cluster.base import HOST, ClusterError
from shortlist.cluster.procs import as_user, wait
from shortlist.cluster.state import Cluster


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if not candidates:
        raise ClusterError(
            f"{name} not found (install Debian's postgresql: apt-get install postgresql)"
        )
    return candidates[-1]


def postgres_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError(
            "running as root needs the `postgres` user (Debian's postgresql)"
        ) from None


def check_traversable(path: Path, user: pwd.struct_passwd) -> None:
    """Every directory above `path` must let `user` pass (x for other, group or owner)."""
    for parent in [*reversed(path.parents)]:
        st = parent.stat()
        mode = st.st_mode
        ok = (
            (st.st_uid == user.pw_uid and mode & stat.S_IXUSR)
            or (st.st_gid == user.pw_gid and mode & stat.S_IXGRP)
            or mode & stat.S_IXOTH
        )
        if not ok:
            raise ClusterError(
                f"PostgreSQL runs as {user.pw_name}, who cannot enter {parent}: choose a "
                "state dir whose parents others may traverse (chmod o+x), e.g. under /tmp"
            )


def up_postgres(c: Cluster, st: dict[str, Any], timeout: float) -> None:
    if c.record("postgres"):
        return
    user = postgres_user()
    data = c.dir / "postgres"
    if user is not None:
        check_traversable(data, user)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = env["LANG"] = "C.UTF-8"
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(mode=0o700)
        pwfile = data / ".pwfile"
        pwfile.write_text(st["secrets"]["postgres"] + "\n")
        if user is not None:
            os.chown(data, user.pw_uid, user.pw_gid)
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        init = subprocess.run(
            [
                pg_bin("initdb"),
                "-D",
                str(data / "db"),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
            env=env,
            cwd=data,
            capture_output=True,
            text=True,
            **as_user(user),
        )
        pwfile.unlink()
        if init.returncode != 0:
            raise ClusterError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    port = st["ports"]["postgres"]
    proc = c._spawn(
        "postgres",
        [
            pg_bin("postgres"),
            "-D",
            str(data / "db"),
            "-p",
            str(port),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            f"unix_socket_directories={data}",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=64MB",
            "-c",
            "synchronous_commit=off",
        ],
        env,
        user,
        cwd=data,
    )
    import psycopg
    from psycopg import sql

    def connect():  # noqa: ANN202
        return psycopg.connect(
            host=HOST,
            port=port,
            user="postgres",
            password=st["secrets"]["postgres"],
            dbname="postgres",
        )

    wait("postgres", lambda: connect().close() is None, proc, c.log("postgres"), timeout)
    conn = connect()
    conn.autocommit = True
    with conn.cursor() as cur:
        for db, role, secret in (
            ("airflow", "airflow", "airflow_db"),
            ("mlflow", "mlflow", "mlflow_db"),
            ("mlflow_auth", "mlflow", "mlflow_db"),
        ):
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            if not cur.fetchone():
                password = sql.Literal(st["secrets"][secret])
                cur.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(role), password
                    )
                )
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if not cur.fetchone():
                cur.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(db), sql.Identifier(role)
                    )
                )
    conn.close()
    print(f"postgres      up: {c.urls(st)['postgres']} (databases airflow, mlflow)", flush=True)
