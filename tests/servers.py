"""Real servers for the test suite: an MLflow tracking server and a SeaweedFS S3 endpoint.

Each starts once per test session on 127.0.0.1 with free ports, in its own process group,
and is stopped when the session ends (also on failure; the children die with the test
process if it is killed, via PR_SET_PDEATHSIG). Binaries are found beside the running
interpreter (the venv's bin dir), never by absolute path.

Fixtures:
    mlflow_server  (session)  MlflowServer: .url (tracking URI), .artifacts_dir; runs with
                              MLflow's basic-auth app: .admin and .pipeline are accounts
                              (username, password), .create_user() and .grant() manage
                              others; the pipeline's credentials are in the environment
                              (MLFLOW_TRACKING_USERNAME/PASSWORD) for the session
    mlflow_tracking (function) the same, with $MLFLOW_TRACKING_URI pointing at it
    s3_server      (session)  S3Server: .endpoint_url, .access_key, .secret_key, .region,
                              .new_bucket(), .client()
    s3             (function) the same, with AWS_* variables set for the test and restored
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
START_ATTEMPTS = 3

_live: list[subprocess.Popen] = []


def binary(name: str) -> Path:
    """An executable installed in the running interpreter's environment."""
    path = BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{name} not found beside {sys.executable}")
    return path


def free_ports(n: int) -> list[int]:
    """n distinct ports the kernel reports free, all held open together while choosing."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_pair(offset: int) -> tuple[int, int]:
    """A free port P with P + offset also free, both below the kernel's ephemeral range.

    SeaweedFS's maintenance worker dials the admin gRPC port at admin port + 10000
    regardless of -admin.port.grpc, so the two must be chosen together.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10_000, 32_768 - offset)
        if _bindable(port) and _bindable(port + offset):
            return port, port + offset
    raise RuntimeError("no free port pair found")


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if the test process dies (Linux)."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    _sigterm_as_interrupt()
    fh = open(log, "ab")  # noqa: SIM115 - owned by the process for its lifetime
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd,
        stdout=fh,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads yet at session start
    )
    fh.close()
    _live.append(proc)
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Signal the whole process group, wait, then SIGKILL whatever is left."""
    if proc in _live:
        _live.remove(proc)
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        proc.wait()
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    # Children of the leader (uvicorn workers, ...) may outlive it: kill the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@atexit.register
def _stop_all() -> None:
    for proc in list(_live):
        stop(proc, grace=3)


def _sigterm_as_interrupt() -> None:
    """Let a SIGTERM to the test run unwind like Ctrl-C, so the servers are stopped."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        with contextlib.suppress(ValueError):  # only possible in the main thread
            signal.signal(signal.SIGTERM, handler)


def _tail(log: Path, n: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class ServerExited(RuntimeError):
    """The server process ended before it became ready."""


def _wait(proc: subprocess.Popen, ready: Any, what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerExited(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if ready():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s:\n{_tail(log)}")


def _start_with_retries(start: Any) -> Any:
    """Ports can be taken between choosing and binding (parallel runs): a server that
    exits during start-up is retried on fresh ports; one that is merely slow is not."""
    last: Exception | None = None
    for _ in range(START_ATTEMPTS):
        try:
            return start()
        except ServerExited as exc:
            last = exc
    raise RuntimeError(f"could not start server after {START_ATTEMPTS} attempts: {last}")


# --------------------------------------------------------------------------- MLflow


PIPELINE_USER = "shortlist-pipeline"


@dataclass
class MlflowServer:
    url: str
    port: int
    backend_uri: str
    artifacts_dir: Path
    log: Path
    process: subprocess.Popen = field(repr=False)
    admin: tuple[str, str] | None = None  # basic-auth admin (username, password)
    pipeline: tuple[str, str] | None = None  # the service account the pipeline writes with

    @property
    def env(self) -> dict[str, str]:
        """The variables an MLflow client needs to act as the pipeline's service account."""
        out = {"MLFLOW_TRACKING_URI": self.url}
        if self.pipeline:
            out["MLFLOW_TRACKING_USERNAME"], out["MLFLOW_TRACKING_PASSWORD"] = self.pipeline
        return out

    def api(
        self, method: str, path: str, body: dict | None = None, auth: tuple[str, str] | None = None
    ) -> tuple[int, dict]:
        """One REST call (auth None: anonymous); (status, JSON body)."""
        import base64
        import json

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw or b"{}")
        except ValueError:
            return status, {"text": raw.decode(errors="replace")[:500]}

    def create_user(self, username: str) -> tuple[str, str]:
        """A new account (default permission: READ); returns (username, password)."""
        password = uuid.uuid4().hex
        status, body = self.api(
            "POST",
            "/api/2.0/mlflow/users/create",
            {"username": username, "password": password},
            self.admin,
        )
        if status != 200:
            raise RuntimeError(f"creating MLflow user {username}: {status} {body}")
        return username, password

    def grant(
        self, model: str, username: str, permission: str = "EDIT", by: tuple[str, str] | None = None
    ) -> None:
        """Grant `username` a permission on one registered model, as `by` (an account with
        MANAGE on it, such as the pipeline that created it; default the admin)."""
        status, body = self.api(
            "POST",
            "/api/3.0/mlflow/users/permissions/grant",
            {
                "username": username,
                "resource_type": "registered_model",
                "resource_id": model,
                "permission": permission,
            },
            by or self.admin,
        )
        if status != 200:
            raise RuntimeError(f"granting {permission} on {model} to {username}: {status} {body}")


AUTH_CONFIG = """[mlflow]
default_permission = READ
database_uri = sqlite:///{db}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


def start_mlflow(root: Path, timeout: float = 300.0, *, auth: bool = True) -> MlflowServer:
    """`mlflow server` on SQLite with proxied artifacts in root/artifacts, waited on /health.

    auth (default): MLflow's basic-auth app (`--app-name basic-auth`), users and grants in
    root/basic_auth.db, an admin with a random password, and the pipeline's service
    account created (it owns what it registers); anonymous requests are refused.

    Start-up is ~6 s on an idle machine but imports mlflow twice (CLI, then the uvicorn
    worker) and was seen taking 150 s on two busy cores: hence the long timeout.
    """
    root.mkdir(parents=True, exist_ok=True)
    artifacts = root / "artifacts"
    artifacts.mkdir(exist_ok=True)
    backend = f"sqlite:///{root / 'mlflow.db'}"
    log = root / "mlflow.log"

    def start() -> MlflowServer:
        (port,) = free_ports(1)
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        if auth:
            config = root / "basic_auth.ini"
            config.write_text(AUTH_CONFIG.format(db=root / "basic_auth.db"))
            env.update(
                MLFLOW_AUTH_CONFIG_PATH=str(config),
                MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
                MLFLOW_FLASK_SERVER_SECRET_KEY=uuid.uuid4().hex,
            )
        cmd = [
            str(binary("mlflow")),
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(artifacts),
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            "1",
            *(["--app-name", "basic-auth"] if auth else []),
        ]
        proc = _spawn(cmd, env, log, root)
        url = f"http://{HOST}:{port}"

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    return resp.status == 200
            except (urllib.error.URLError, OSError):
                return False

        try:
            _wait(proc, healthy, "mlflow server", log, timeout)
        except BaseException:
            stop(proc)
            raise
        server = MlflowServer(url, port, backend, artifacts, log, proc)
        if auth:
            server.admin = ("admin", admin_password)
            try:
                server.pipeline = _existing_or_new_user(server, PIPELINE_USER)
            except BaseException:
                stop(proc)
                raise
        return server

    admin_password = uuid.uuid4().hex  # the same across retries: the user store persists
    return _start_with_retries(start)


def _existing_or_new_user(server: MlflowServer, username: str) -> tuple[str, str]:
    status, _ = server.api(
        "GET", f"/api/2.0/mlflow/users/get?username={username}", auth=server.admin
    )
    if status == 200:  # a retried start reuses the user store: reset the password
        password = uuid.uuid4().hex
        server.api(
            "PATCH",
            "/api/2.0/mlflow/users/update-password",
            {"username": username, "password": password},
            server.admin,
        )
        return username, password
    return server.create_user(username)


# --------------------------------------------------------------------------- S3


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    log: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def env(self) -> dict[str, str]:
        """The variables a boto3/DVC client needs to talk to this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a fresh name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}".lower()
        self.client().create_bucket(Bucket=name)
        return name


def start_s3(root: Path, timeout: float = 120.0) -> S3Server:
    """`weed mini` with every listening port chosen here, so parallel runs cannot collide."""
    root.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "shortlist-test", uuid.uuid4().hex
    log = root / "weed.log"

    def start() -> S3Server:
        data = root / f"data-{uuid.uuid4().hex[:6]}"
        data.mkdir()
        s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc = free_ports(8)
        admin, admin_grpc = free_port_pair(10_000)
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
        }
        cmd = [
            str(binary("weed")),
            "mini",
            f"-dir={data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-admin.port={admin}",
            f"-admin.port.grpc={admin_grpc}",
            f"-filer.localSocket={data / 'filer.sock'}",
            f"-s3.localSocket={data / 's3.sock'}",
        ]
        proc = _spawn(cmd, env, log, root)
        server = S3Server(
            f"http://{HOST}:{s3}", access_key, secret_key, "us-east-1", data, log, proc
        )

        def ready() -> bool:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3",
                endpoint_url=server.endpoint_url,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                region_name=server.region,
                config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 0}),
            )
            try:
                client.list_buckets()
            except Exception:  # noqa: BLE001 - not up yet
                return False
            return True

        try:
            _wait(proc, ready, "weed mini", log, timeout)
        except BaseException:
            stop(proc, signal.SIGINT)
            raise
        return server

    return _start_with_retries(start)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """The session's MLflow server with basic-auth; the pipeline's service account is in
    the environment for the session (restored after), as a deployment would set it."""
    server = start_mlflow(tmp_path_factory.mktemp("mlflow-server"))
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    before = {k: os.environ.get(k) for k in names}
    os.environ.update({k: v for k, v in server.env.items() if k in names})
    try:
        yield server
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop(server.process)


@pytest.fixture
def mlflow_tracking(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> MlflowServer:
    """The session's MLflow server, with $MLFLOW_TRACKING_URI (and the pipeline's
    credentials) set for this test."""
    for name, value in mlflow_server.env.items():
        monkeypatch.setenv(name, value)
    return mlflow_server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3(tmp_path_factory.mktemp("s3-server"))
    try:
        yield server
    finally:
        stop(server.process, signal.SIGINT)  # weed shuts down cleanly on SIGINT


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """The session's S3 server, with AWS_* variables set for this test (restored after).

    Shared AWS config files are pointed at nothing so a developer's profile cannot leak in.
    """
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server
