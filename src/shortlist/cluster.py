"""The scale-out stack on one machine: `infra/local-cluster up|down|status|env|dvc-remote`.

What `up` starts, each on 127.0.0.1 on a free port, in its own process group, with its
log and pid file under the state dir (default `<work_dir>/cluster`):

    postgres        Debian's PostgreSQL, a cluster in <state>/postgres (run as the
                    `postgres` user when started as root: it refuses root); databases
                    airflow, mlflow and mlflow_auth, each with its own role and password
    redis           Debian's redis-server, the Celery broker (password required)
    s3              SeaweedFS (`weed mini`, the S3 server the tests use), buckets
                    `shortlist` (data, bundles, live pointer, DVC remote) and `mlflow`
    mlflow          MLflow server: backend store and basic-auth users on PostgreSQL,
                    artifacts proxied to s3://mlflow/artifacts
    airflow-api     Airflow 3 api-server (UI, REST API, task execution API)
    scheduler       Airflow scheduler, CeleryExecutor (metadata and results on PostgreSQL)
    dag-processor   Airflow DAG processor (the repository's dags/)
    worker-1/2      two Celery workers, concurrency 1 each; a task instance's hostname
                    names the worker that ran it (`worker_hostname`)

The DAGs read `<state>/params.yaml`: the given params with data, bundles (and so the
live pointer) on S3 and MLflow at the cluster's server. `status --json` prints every
URL, port, login and pid; `env` prints the variables a shell needs to use the cluster
(Airflow CLI, MLflow client, boto3, `shortlist --set ...`); `dvc-remote DIR` points a
DVC repository at the S3 remote. `down` stops what `up` started, last started first,
each with its own stop signal, then whatever its process tree left, and reports
anything still running. Secrets are generated once into <state>/cluster.json (0600).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
WORKERS = 2
DATA_BUCKET = "shortlist"
MLFLOW_BUCKET = "mlflow"
S3_REGION = "us-east-1"
S3_ACCESS_KEY = "shortlist-cluster"
WORKER_ENV = "SHORTLIST_CLUSTER_WORKER"
STATE_FILE = "cluster.json"
# Ports the default stack (`make up`) and Airflow's log server use: never chosen here.
RESERVED_PORTS = {5000, 8000, 8080, 8793, 8794}


class ClusterError(RuntimeError):
    """A part of the cluster could not be started or stopped; the message says which."""


def worker_hostname() -> str:
    """Airflow's `hostname_callable` on the Celery workers: the machine's name plus the
    worker's, so a task instance records which of the workers on this host ran it."""
    name = os.environ.get(WORKER_ENV)
    fqdn = socket.getfqdn()
    return f"{name}.{fqdn}" if name else fqdn


# --------------------------------------------------------------------------- processes


def _start_time(pid: int) -> str | None:
    """Start time of a live, non-zombie process in clock ticks since boot (Linux)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) of every process (Linux /proc)."""
    out = {}
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        out[int(path.split("/")[2])] = (int(fields[1]), int(fields[2]), fields[0])
    return out


def _tree(pid: int) -> set[int]:
    """The live (non-zombie) processes of pid's process group and all their descendants."""
    table = _proc_table()
    found = {p for p, (_, pgid, _) in table.items() if pgid == pid} | {pid}
    grew = True
    while grew:
        more = {p for p, (ppid, _, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return {p for p in found if p in table and table[p][2] != "Z"}


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _alive(pids: set[int], started: dict[int, str | None]) -> set[int]:
    """Those of pids still running as the same processes (a recycled pid does not count)."""
    out = set()
    for pid in pids:
        _reap(pid)
        now = _start_time(pid)
        if now is not None and now == started.get(pid, now):
            out.add(pid)
    return out


def _free_port(taken: set[int], low: int = 20_000, high: int = 32_000) -> int:
    """A port the kernel says is free, below its ephemeral range, not reserved or taken."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(low, high)
        if port in taken or port in RESERVED_PORTS:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise ClusterError("no free port found")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _wait(what: str, ready: Any, proc: subprocess.Popen | None, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ClusterError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if ready():
                return
        except ClusterError:
            raise
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    raise ClusterError(f"{what} not ready after {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path, n: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --------------------------------------------------------------------------- state


@dataclass
class Service:
    name: str
    stop_signal: int
    stop_timeout_s: float


# Start order; `down` goes the other way.
SERVICES = [
    Service("postgres", signal.SIGINT, 30),  # SIGINT: PostgreSQL's fast shutdown
    Service("redis", signal.SIGTERM, 15),
    Service("s3", signal.SIGINT, 15),  # weed shuts down cleanly on SIGINT
    Service("mlflow", signal.SIGTERM, 20),
    Service("airflow-api", signal.SIGTERM, 30),
    Service("scheduler", signal.SIGTERM, 30),
    Service("dag-processor", signal.SIGTERM, 30),
    *[Service(f"worker-{i}", signal.SIGTERM, 60) for i in range(1, WORKERS + 1)],
]


class Cluster:
    """The cluster of one state dir: its ports, secrets, pid files and logs."""

    def __init__(self, state_dir: str | Path):
        self.dir = Path(state_dir).resolve()
        self.logs = self.dir / "logs"
        self.pids = self.dir / "pids"
        self.state_file = self.dir / STATE_FILE

    # ---- state: ports and secrets, generated once
    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _init_state(self) -> dict[str, Any]:
        found = self.state()
        ports = found.get("ports") or {}
        if ports and not self.running() and not all(_bindable(p) for p in ports.values()):
            found.pop("ports")  # nothing runs and a port chosen last time is taken now
        if "ports" not in found:
            taken: set[int] = set()
            names = ["postgres", "redis", "mlflow", "airflow", "s3"]
            names += ["s3_grpc", "master", "master_grpc", "volume", "volume_grpc"]
            names += ["filer", "filer_grpc"]
            names += [f"worker_{i}_logs" for i in range(1, WORKERS + 1)]
            ports = {n: _free_port(taken) for n in names}
            # SeaweedFS dials its admin gRPC port at admin port + 10000: choose them together.
            for _ in range(200):
                admin = _free_port(taken, 10_000, 22_000)
                grpc = admin + 10_000  # below 32768, the kernel's ephemeral range
                if grpc not in taken and grpc not in RESERVED_PORTS and _bindable(grpc):
                    ports["admin"], ports["admin_grpc"] = admin, grpc
                    taken.add(grpc)
                    break
            else:
                raise ClusterError("no free port pair for the S3 server's admin")
            found["ports"] = ports
        if "secrets" not in found:
            from cryptography.fernet import Fernet

            found["secrets"] = {
                **{k: secrets.token_hex(16) for k in ("postgres", "airflow_db", "mlflow_db")},
                "redis": secrets.token_hex(16),
                "s3_secret_key": secrets.token_hex(20),
                "airflow_jwt": secrets.token_urlsafe(32),
                "airflow_api_secret": secrets.token_urlsafe(32),
                "airflow_fernet": Fernet.generate_key().decode(),
            }
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(STATE_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(found, fh, indent=1)
        os.replace(tmp, self.state_file)
        return found

    # ---- pid files
    def _pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def record(self, name: str) -> dict | None:
        """The pid record of a running service, or None."""
        try:
            rec = json.loads(self._pid_file(name).read_text())
            pid = int(rec["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        _reap(pid)
        if _start_time(pid) is None or _start_time(pid) != rec.get("started"):
            return None
        return rec

    def running(self) -> dict[str, int]:
        return {s.name: rec["pid"] for s in SERVICES if (rec := self.record(s.name))}

    def processes(self) -> dict[int, str | None]:
        """Every live process the cluster's services run (leaders, their groups and
        descendants), with its start time: what `down` must leave nothing of."""
        out: dict[int, str | None] = {}
        for pid in self.running().values():
            for p in _tree(pid):
                out[p] = _start_time(p)
        return {p: t for p, t in out.items() if t is not None}

    # ---- derived settings
    def urls(self, st: dict[str, Any]) -> dict[str, str]:
        p = st["ports"]
        return {
            "airflow": f"http://{HOST}:{p['airflow']}",
            "mlflow": f"http://{HOST}:{p['mlflow']}",
            "s3": f"http://{HOST}:{p['s3']}",
            "postgres": f"postgresql://{HOST}:{p['postgres']}",
            "redis": f"redis://{HOST}:{p['redis']}/0",
        }

    def params_file(self) -> Path:
        return self.dir / "params.yaml"

    def airflow_home(self) -> Path:
        return self.dir / "airflow"

    def airflow_password(self) -> str | None:
        try:
            users = json.loads(
                (self.airflow_home() / "simple_auth_manager_passwords.json.generated").read_text()
            )
        except (OSError, ValueError):
            return None
        return users.get("admin")

    def _pg_url(self, st: dict[str, Any], db: str, role: str, secret: str, scheme: str) -> str:
        return f"{scheme}://{role}:{st['secrets'][secret]}@{HOST}:{st['ports']['postgres']}/{db}"

    def s3_env(self, st: dict[str, Any]) -> dict[str, str]:
        url = self.urls(st)["s3"]
        return {
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": st["secrets"]["s3_secret_key"],
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_ENDPOINT_URL_S3": url,
            "MLFLOW_S3_ENDPOINT_URL": url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client_env(self, st: dict[str, Any]) -> dict[str, str]:
        """What a shell needs to use the cluster: Airflow's config (CLI), MLflow as the
        pipeline's service account, S3, the params file."""
        from shortlist.stack import mlflow_accounts

        p, s, urls = st["ports"], st["secrets"], self.urls(st)
        pipeline_user, pipeline_password = mlflow_accounts(self._stack_params())["pipeline"]
        airflow_db = self._pg_url(st, "airflow", "airflow", "airflow_db", "postgresql+psycopg")
        return {
            **self.s3_env(st),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.airflow_home()),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__FERNET_KEY": s["airflow_fernet"],
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{urls['airflow']}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": airflow_db,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://:{s['redis']}@{HOST}:{p['redis']}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + airflow_db,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(p["airflow"]),
            "AIRFLOW__API__BASE_URL": urls["airflow"],
            "AIRFLOW__API__SECRET_KEY": s["airflow_api_secret"],
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": s["airflow_jwt"],
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "SHORTLIST_PARAMS": str(self.params_file()),
            "MLFLOW_TRACKING_URI": urls["mlflow"],
            "MLFLOW_TRACKING_USERNAME": pipeline_user,
            "MLFLOW_TRACKING_PASSWORD": pipeline_password,
            "DVC_NO_ANALYTICS": "1",
        }

    def _stack_params(self):  # noqa: ANN202 - a Params whose work_dir is the state dir
        from shortlist.config import load_params

        params = load_params(self.params_file())
        # The MLflow accounts' secrets live beside the cluster's other secrets.
        return params.with_overrides({"project.work_dir": str(self.dir)})

    # ---- start one service
    def _spawn(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        user: pwd.struct_passwd | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd or self.dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **_as_user(user),
        )
        log.close()
        rec = {"pid": proc.pid, "started": _start_time(proc.pid), "cmd": cmd[:3]}
        self._pid_file(name).write_text(json.dumps(rec))
        return proc

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def _as_user(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """Popen keywords that run the child as `user` (None: as this process)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _pg_bin(name: str) -> str:
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


def missing_binaries() -> list[str]:
    """The system programs the cluster needs that this machine lacks."""
    out = []
    for name in ("postgres", "initdb"):
        try:
            _pg_bin(name)
        except ClusterError:
            out.append(f"{name} (Debian package postgresql)")
    if not shutil.which("redis-server"):
        out.append("redis-server (Debian package redis-server)")
    for name in ("weed", "airflow", "mlflow"):
        if not (BIN / name).exists():
            out.append(f"{name} (in the project's venv)")
    return out


def _postgres_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError(
            "running as root needs the `postgres` user (Debian's postgresql)"
        ) from None


def _check_traversable(path: Path, user: pwd.struct_passwd) -> None:
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


# --------------------------------------------------------------------------- up


def up(state_dir: str | Path, params_file: str | Path | None = None, timeout: float = 600) -> dict:
    """Start every service that is not running yet; returns `status()`."""
    missing = missing_binaries()
    if missing:
        raise ClusterError("missing: " + ", ".join(missing))
    c = Cluster(state_dir)
    c.dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        c.dir.chmod(c.dir.stat().st_mode | stat.S_IXOTH)  # the postgres user passes through
    st = c._init_state()
    _write_params(c, st, params_file)
    started = time.monotonic()
    _up_postgres(c, st, timeout)
    _up_redis(c, st, timeout)
    _up_s3(c, st, timeout)
    _up_mlflow(c, st, timeout)
    _up_airflow(c, st, timeout)
    print(f"cluster up in {time.monotonic() - started:.0f}s; state in {c.dir}", flush=True)
    return status(state_dir)


def _write_params(c: Cluster, st: dict[str, Any], params_file: str | Path | None) -> None:
    """<state>/params.yaml: the given params (default the repository's) with data and
    bundles on S3, MLflow at the cluster's server, local work paths under the state dir."""
    import yaml

    from shortlist.config import load_params

    base = load_params(params_file or REPO / "params.yaml")
    params = base.under(c.dir / "work").with_overrides(
        {
            "data.dir": f"s3://{DATA_BUCKET}/data",
            "bundle.root": f"s3://{DATA_BUCKET}/bundles",
            "mlflow.tracking_uri": c.urls(st)["mlflow"],
            "storage.s3_endpoint_url": c.urls(st)["s3"],
            "storage.s3_region": S3_REGION,
        }
    )
    c.params_file().write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))


def _up_postgres(c: Cluster, st: dict[str, Any], timeout: float) -> None:
    if c.record("postgres"):
        return
    user = _postgres_user()
    data = c.dir / "postgres"
    if user is not None:
        _check_traversable(data, user)
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
                _pg_bin("initdb"),
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
            **_as_user(user),
        )
        pwfile.unlink()
        if init.returncode != 0:
            raise ClusterError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    port = st["ports"]["postgres"]
    proc = c._spawn(
        "postgres",
        [
            _pg_bin("postgres"),
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

    _wait("postgres", lambda: connect().close() is None, proc, c.log("postgres"), timeout)
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


def _up_redis(c: Cluster, st: dict[str, Any], timeout: float) -> None:
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
    _wait("redis", client.ping, proc, c.log("redis"), timeout)
    client.close()
    print(f"redis         up: {c.urls(st)['redis']}", flush=True)


def _s3_client(c: Cluster, st: dict[str, Any]) -> Any:
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


def _up_s3(c: Cluster, st: dict[str, Any], timeout: float) -> None:
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
    client = _s3_client(c, st)
    _wait("s3 (weed mini)", lambda: client.list_buckets() is not None, proc, c.log("s3"), timeout)
    have = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in (DATA_BUCKET, MLFLOW_BUCKET):
        if bucket not in have:
            client.create_bucket(Bucket=bucket)
    print(
        f"s3            up: {c.urls(st)['s3']} (buckets {DATA_BUCKET}, {MLFLOW_BUCKET})", flush=True
    )


MLFLOW_AUTH_CONFIG = """[mlflow]
default_permission = READ
database_uri = {db}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


def _up_mlflow(c: Cluster, st: dict[str, Any], timeout: float) -> None:
    from shortlist.stack import ensure_mlflow_accounts, mlflow_secrets

    url = c.urls(st)["mlflow"]
    params = c._stack_params()
    if c.record("mlflow"):
        return
    s = mlflow_secrets(params)  # admin, service account and reviewer passwords (0600)
    config = c.dir / "mlflow-basic-auth.ini"
    auth_db = c._pg_url(st, "mlflow_auth", "mlflow", "mlflow_db", "postgresql+psycopg")
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(MLFLOW_AUTH_CONFIG.format(db=auth_db))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        **c.s3_env(st),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": s["admin_password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": s["secret_key"],
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        c._pg_url(st, "mlflow", "mlflow", "mlflow_db", "postgresql+psycopg"),
        "--artifacts-destination",
        f"s3://{MLFLOW_BUCKET}/artifacts",
        "--host",
        HOST,
        "--port",
        str(st["ports"]["mlflow"]),
        "--workers",
        "1",
        "--app-name",
        "basic-auth",
    ]
    proc = c._spawn("mlflow", cmd, env)
    _wait("mlflow", lambda: _http_ok(f"{url}/health"), proc, c.log("mlflow"), timeout)
    ensure_mlflow_accounts(params, url)
    print(
        f"mlflow        up: {url} (store on postgres, artifacts s3://{MLFLOW_BUCKET}/artifacts)",
        flush=True,
    )


def _up_airflow(c: Cluster, st: dict[str, Any], timeout: float) -> None:
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW_", "AIRFLOW__", "MLFLOW_", "SHORTLIST_"))
        },
        **c.client_env(st),
        "PYTHONUNBUFFERED": "1",
    }
    c.airflow_home().mkdir(exist_ok=True)
    todo = [n for n in ("airflow-api", "scheduler", "dag-processor") if not c.record(n)]
    todo += [f"worker-{i}" for i in range(1, WORKERS + 1) if not c.record(f"worker-{i}")]
    if not todo:
        return
    # Idempotent: a no-op on a migrated database, the schema otherwise.
    t0 = time.monotonic()
    mig = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"],
        env=env,
        cwd=c.airflow_home(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if mig.returncode != 0:
        raise ClusterError(
            f"airflow db migrate failed:\n{mig.stdout[-3000:]}\n{mig.stderr[-3000:]}"
        )
    print(f"airflow db    migrated on postgres in {time.monotonic() - t0:.0f}s", flush=True)
    airflow = str(BIN / "airflow")
    procs = {}
    for name in todo:
        if name == "airflow-api":
            cmd = [airflow, "api-server", "--port", str(st["ports"]["airflow"]), "--host", HOST]
            procs[name] = c._spawn(name, cmd, env, cwd=c.airflow_home())
        elif name in ("scheduler", "dag-processor"):
            procs[name] = c._spawn(name, [airflow, name], env, cwd=c.airflow_home())
        else:
            i = name.split("-")[1]
            wenv = {
                **env,
                WORKER_ENV: name,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "shortlist.cluster.worker_hostname",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(st["ports"][f"worker_{i}_logs"]),
            }
            cmd = [airflow, "celery", "worker", "--celery-hostname", f"{name}@%h"]
            cmd += ["--concurrency", "1", "--without-gossip", "--without-mingle"]
            procs[name] = c._spawn(name, cmd, wenv, cwd=c.airflow_home())
    url = c.urls(st)["airflow"]
    if "airflow-api" in procs:
        _wait(
            "airflow api-server",
            lambda: _http_ok(f"{url}/api/v2/monitor/health"),
            procs["airflow-api"],
            c.log("airflow-api"),
            timeout,
        )
    workers = [n for n in procs if n.startswith("worker-")]
    if workers:
        broker = env["AIRFLOW__CELERY__BROKER_URL"]

        def workers_ready() -> bool:
            for name in workers:
                if procs[name].poll() is not None:
                    raise ClusterError(
                        f"{name} exited with {procs[name].returncode}:\n{_tail(c.log(name))}"
                    )
            return set(workers) <= _celery_workers(broker)

        _wait("celery workers", workers_ready, None, c.log(workers[-1]), timeout)
    for name, proc in procs.items():
        if proc.poll() is not None:
            raise ClusterError(f"{name} exited with {proc.returncode}:\n{_tail(c.log(name))}")
    print(
        f"airflow       up: {url} (scheduler, dag-processor, {WORKERS} celery workers)", flush=True
    )


def _celery_workers(broker: str) -> set[str]:
    """Names (before the @) of the Celery workers that answer a ping on the broker."""
    from celery import Celery

    app = Celery(broker=broker)
    try:
        replies = app.control.ping(timeout=2.0) or []
    finally:
        app.close()
    return {name.split("@")[0] for reply in replies for name in reply}


# --------------------------------------------------------------------------- down


def down(state_dir: str | Path) -> dict[str, Any]:
    """Stop what `up` started, last started first; returns how each service ended and
    the processes still running afterwards (empty when everything stopped)."""
    c = Cluster(state_dir)
    before = c.processes()  # every process of every service, before any is signalled
    ended: dict[str, str] = {}
    for svc in reversed(SERVICES):
        rec = c.record(svc.name)
        if rec is None:
            c._pid_file(svc.name).unlink(missing_ok=True)
            continue
        pid = int(rec["pid"])
        tree = {p: _start_time(p) for p in _tree(pid)}
        t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, svc.stop_signal)
        deadline = time.monotonic() + svc.stop_timeout_s
        while c.record(svc.name) and time.monotonic() < deadline:
            time.sleep(0.2)
        how = "clean" if c.record(svc.name) is None else "forced"
        # Whatever the leader left (pool children, a task mid-run): TERM, then KILL.
        left = _alive(set(tree) | _tree(pid), tree)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not left:
                break
            for p in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, sig)
            grace = time.monotonic() + (10 if sig == signal.SIGTERM else 5)
            while (left := _alive(left, tree)) and time.monotonic() < grace:
                time.sleep(0.2)
            if sig == signal.SIGTERM and left:
                how = "forced"
        c._pid_file(svc.name).unlink(missing_ok=True)
        ended[svc.name] = how
        print(f"{svc.name:13s} stopped ({how}) in {time.monotonic() - t0:.1f}s", flush=True)
    still = sorted(_alive(set(before), before))
    if not ended:
        print("nothing to stop", flush=True)
    if still:
        print(f"still running: {still}", flush=True)
    return {"ended": ended, "still_running": still, "stopped_pids": sorted(before)}


# --------------------------------------------------------------------------- status


def status(state_dir: str | Path) -> dict[str, Any]:
    """Which services run (pid), their URLs, logins, and every pid of their trees."""
    c = Cluster(state_dir)
    st = c.state()
    out: dict[str, Any] = {"state_dir": str(c.dir), "services": {}}
    for svc in SERVICES:
        rec = c.record(svc.name)
        out["services"][svc.name] = {"running": rec is not None, "pid": rec and rec["pid"]}
    out["processes"] = sorted(c.processes())
    if st.get("ports"):
        from shortlist.stack import mlflow_accounts

        out["urls"] = c.urls(st)
        out["ports"] = st["ports"]
        out["params_file"] = str(c.params_file())
        out["airflow_home"] = str(c.airflow_home())
        out["buckets"] = {"data": DATA_BUCKET, "mlflow": MLFLOW_BUCKET}
        out["dvc_remote"] = f"s3://{DATA_BUCKET}/dvc"
        logins = {"airflow": ["admin", c.airflow_password()]}
        if c.params_file().exists():
            for who, (user, password) in mlflow_accounts(c._stack_params()).items():
                logins[f"mlflow_{who}"] = [user, password]
        out["logins"] = logins
        out["logs"] = str(c.logs)
    return out


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infra/local-cluster", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["up", "down", "status", "env", "dvc-remote"])
    parser.add_argument("repo", nargs="?", help="dvc-remote: the DVC repository (default .)")
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("SHORTLIST_CLUSTER_DIR", ".shortlist/cluster"),
        help="where the cluster keeps its data, logs, pid files and secrets "
        "(default $SHORTLIST_CLUSTER_DIR or .shortlist/cluster)",
    )
    parser.add_argument("--params", help="params file the DAGs start from (default params.yaml)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per service start")
    parser.add_argument("--json", action="store_true", help="status: as JSON")
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            result = up(args.state_dir, args.params, args.timeout)
            _print_status(result)
        elif args.action == "down":
            result = down(args.state_dir)
            if args.json:
                print(json.dumps(result))
            return 1 if result["still_running"] else 0
        elif args.action == "status":
            result = status(args.state_dir)
            if args.json:
                print(json.dumps(result, indent=1))
            else:
                _print_status(result)
            return 0 if all(s["running"] for s in result["services"].values()) else 3
        elif args.action == "env":
            c = Cluster(args.state_dir)
            for k, v in c.client_env(c.state()).items():
                print(f"export {k}={_shell_quote(v)}")
        else:
            print(dvc_remote(args.state_dir, args.repo or "."))
    except ClusterError as exc:
        print(f"local-cluster: {exc}", file=sys.stderr)
        return 1
    return 0


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def _print_status(result: dict[str, Any]) -> None:
    for name, s in result["services"].items():
        print(f"{name:13s} {'running (pid ' + str(s['pid']) + ')' if s['running'] else 'stopped'}")
    if "urls" in result:
        logins = result["logins"]
        print(
            f"Airflow UI/API {result['urls']['airflow']}   user admin   password {logins['airflow'][1]}"
        )
        reviewer = logins.get("mlflow_reviewer", ["reviewer", "?"])
        print(
            f"MLflow UI      {result['urls']['mlflow']}   user {reviewer[0]}   password {reviewer[1]}"
        )
        print(f"S3             {result['urls']['s3']}   (infra/local-cluster env prints the keys)")
        print(f"params         {result['params_file']}")
        print(f"logs           {result['logs']}")


if __name__ == "__main__":
    sys.exit(main())
