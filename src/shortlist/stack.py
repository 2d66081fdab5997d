"""The one local stack: MLflow UI, Airflow (standalone), the serving API.

`python -m shortlist.stack up|down` (what `make up` / `make down` run). `make demo` uses
the same MLflow server and the same Airflow home (`<work_dir>/airflow`), so what the demo
did is what the UIs show. Each service runs in the background from the project's venv,
in its own process group, with its log and pid file under `<work_dir>/stack/`. MLflow
runs with its basic-auth app: the admin password, the Flask secret key and the passwords
of the pipeline's service account and of the reviewer are generated once into
`<work_dir>/mlflow-auth.json` (mode 0600) and reused on every restart; requests without
a login are refused, accounts read unless granted more. Every process the stack starts
talks to MLflow as the service account (MLFLOW_TRACKING_USERNAME/PASSWORD). A pid file
also records the process's start time, so `down` never signals a recycled pid: it stops
exactly the processes `up` (or the demo) started, Airflow with SIGINT to its leader
(standalone then stops its scheduler, triggerer, DAG processor and API server itself;
SIGTERM, or SIGINT to the whole group, orphans or races them). A leader whose children
are all still the same after `STOP_RESEND_S` has not acted on its signal and gets it
again. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

from shortlist.config import Params, load_params

BIN = Path(sys.executable).parent
AIRFLOW_USER = "admin"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
MLFLOW_ADMIN = "admin"
PIPELINE_USER = "shortlist-pipeline"  # the service account: creates (so MANAGEs) the model
REVIEWER_USER = "reviewer"  # granted EDIT on the registered model: moves `champion`
MLFLOW_AUTH_FILE = "mlflow-auth.json"
_SECRETS = ("admin_password", "secret_key", "pipeline_password", "reviewer_password")
AUTH_CONFIG = """[mlflow]
default_permission = READ
database_uri = sqlite:///{db}
admin_username = {admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    health: str
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 30.0


def services(ports: dict[str, int]) -> list[Service]:
    return [
        Service("mlflow", ports["mlflow"], "/health"),
        Service("airflow", ports["airflow"], "/api/v2/monitor/health", signal.SIGINT, 60.0),
        Service("api", ports["api"], "/health"),
    ]


def stack_dir(params: Params) -> Path:
    """Where the stack keeps its pid files and logs."""
    return Path(params.project.work_dir).resolve() / "stack"


def airflow_home(params: Params) -> Path:
    """The one Airflow home of the local stack, shared by `make demo` and `make up`."""
    return Path(params.project.work_dir).resolve() / "airflow"


def airflow_password(params: Params) -> str | None:
    """The simple auth manager's generated password of AIRFLOW_USER, once Airflow wrote it."""
    try:
        users = json.loads((airflow_home(params) / PASSWORDS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return users.get(AIRFLOW_USER)


def mlflow_auth_file(params: Params) -> Path:
    """The MLflow server's generated secrets (mode 0600, never in git: under work_dir)."""
    return Path(params.project.work_dir).resolve() / MLFLOW_AUTH_FILE


def mlflow_secrets(params: Params) -> dict[str, str]:
    """The admin password, Flask secret key and account passwords: generated on first
    use into mlflow_auth_file (mode 0600), the same on every later start."""
    path = mlflow_auth_file(params)
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        found = {}
    values = {k: found.get(k) or secrets.token_urlsafe(24) for k in _SECRETS}
    if values != {k: found.get(k) for k in _SECRETS}:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(values, fh, indent=1)
        os.replace(tmp, path)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return values


def mlflow_accounts(params: Params) -> dict[str, tuple[str, str]]:
    """(username, password) of the admin, the pipeline's service account and the reviewer."""
    s = mlflow_secrets(params)
    return {
        "admin": (MLFLOW_ADMIN, s["admin_password"]),
        "pipeline": (PIPELINE_USER, s["pipeline_password"]),
        "reviewer": (REVIEWER_USER, s["reviewer_password"]),
    }


def mlflow_server_env(params: Params) -> dict[str, str]:
    """What the MLflow server itself needs for its basic-auth app: the auth config (users
    and grants in a SQLite file under the stack dir, default permission READ), the admin's
    password and the session secret."""
    folder = stack_dir(params)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "mlflow-basic-auth.ini"
    config.write_text(AUTH_CONFIG.format(db=folder / "mlflow-auth.db", admin=MLFLOW_ADMIN))
    s = mlflow_secrets(params)
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": s["admin_password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": s["secret_key"],
    }


def _mlflow_api(
    url: str, method: str, path: str, auth: tuple[str, str], body: dict | None = None
) -> tuple[int, dict]:
    """One REST call to the MLflow server as `auth`; (status, JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", "Basic " + b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"message": raw.decode(errors="replace")[:300]}


def ensure_mlflow_accounts(params: Params, url: str) -> None:
    """Idempotently: the service account and the reviewer exist with the passwords of
    mlflow_auth_file; the registered model exists (created by the service account, which
    so MANAGEs it); the reviewer holds EDIT on it. A model or experiment made before auth
    was on is granted MANAGE to the service account by the admin."""
    acc = mlflow_accounts(params)
    admin = acc["admin"]

    def call(method: str, path: str, auth: tuple[str, str], body: dict | None = None) -> dict:
        status, answer = _mlflow_api(url, method, path, auth, body)
        if status != 200 and answer.get("error_code") != "RESOURCE_ALREADY_EXISTS":
            raise SystemExit(f"mlflow: {method} {path} as {auth[0]}: {status} {answer}")
        return answer

    for name, password in (acc["pipeline"], acc["reviewer"]):
        q = urllib.parse.urlencode({"username": name})
        status, _ = _mlflow_api(url, "GET", f"/api/2.0/mlflow/users/get?{q}", admin)
        if status == 200:
            body = {"username": name, "password": password}
            call("PATCH", "/api/2.0/mlflow/users/update-password", admin, body)
        else:
            body = {"username": name, "password": password}
            call("POST", "/api/2.0/mlflow/users/create", admin, body)

    def grant(user: str, kind: str, resource: str, permission: str) -> None:
        body = {
            "username": user,
            "resource_type": kind,
            "resource_id": resource,
            "permission": permission,
        }
        call("POST", "/api/3.0/mlflow/users/permissions/grant", admin, body)

    model = params.promotion.registered_model
    q = urllib.parse.urlencode({"name": model})
    status, _ = _mlflow_api(url, "GET", f"/api/2.0/mlflow/registered-models/get?{q}", admin)
    if status == 200:
        grant(PIPELINE_USER, "registered_model", model, "MANAGE")
    else:
        call("POST", "/api/2.0/mlflow/registered-models/create", acc["pipeline"], {"name": model})
    grant(REVIEWER_USER, "registered_model", model, "EDIT")
    q = urllib.parse.urlencode({"experiment_name": params.mlflow.experiment})
    status, answer = _mlflow_api(url, "GET", f"/api/2.0/mlflow/experiments/get-by-name?{q}", admin)
    if status == 200:
        grant(PIPELINE_USER, "experiment", answer["experiment"]["experiment_id"], "MANAGE")


def backend_store(params: Params) -> str:
    """The MLflow server's store: the params' SQLite store, so CLI runs made without a
    server (tracking straight into that file) show up in the UI too."""
    uri = params.mlflow.tracking_uri
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return f"sqlite:///{Path(params.project.work_dir).resolve() / 'mlflow.db'}"


def _command(service: Service, params: Params) -> list[str]:
    if service.name == "mlflow":
        return [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend_store(params),
            "--artifacts-destination",
            str(Path(params.project.work_dir).resolve() / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(service.port),
            "--workers",
            "1",
            "--app-name",
            "basic-auth",
        ]
    if service.name == "airflow":
        return [str(BIN / "airflow"), "standalone"]
    return [str(BIN / "shortlist"), "serve", "--port", str(service.port)]


def stack_env(
    params: Params, ports: dict[str, int], params_file: str | Path | None = None
) -> dict[str, str]:
    """Environment shared by the stack and the demo: one MLflow, one Airflow home."""
    project = Path.cwd()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "AIRFLOW_HOME": str(airflow_home(params)),
        "AIRFLOW__CORE__DAGS_FOLDER": str(project / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "SHORTLIST_PARAMS": str(Path(params_file or project / "params.yaml").resolve()),
        "DVC_NO_ANALYTICS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if ports.get("mlflow"):
        env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{ports['mlflow']}"
        user, password = mlflow_accounts(params)["pipeline"]
        env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = user, password
    if ports.get("airflow"):
        env["AIRFLOW__API__PORT"] = str(ports["airflow"])
        env["AIRFLOW__API__BASE_URL"] = f"http://127.0.0.1:{ports['airflow']}"
    return env


def _healthy(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status < 500
    except Exception:
        return False


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None if it is gone
    or a zombie: with the pid, it names one process, never a later one with a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]


def _reap(pid: int) -> None:
    """Collect the exit status when the service is this process's own child (tests)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _running(pid_file: Path) -> dict | None:
    """The record of a running service (`pid`, `started`, `by`), or None."""
    try:
        record = json.loads(pid_file.read_text())
        pid = int(record["pid"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    _reap(pid)
    if _start_time(pid) is None or _start_time(pid) != record.get("started"):
        return None
    return record


def up(
    params: Params,
    ports: dict[str, int],
    wait_s: float = 180,
    only: set[str] | None = None,
    params_file: str | Path | None = None,
    started_by: str = "make up",
) -> dict[str, str]:
    """Start the services (all, or `only` those named) and wait until each is healthy;
    returns their URLs. A service already running is left as it is."""
    work = stack_dir(params)
    work.mkdir(parents=True, exist_ok=True)
    airflow_home(params).mkdir(parents=True, exist_ok=True)
    env = stack_env(params, ports, params_file)
    urls = {}
    for svc in services(ports):
        if only is not None and svc.name not in only:
            continue
        urls[svc.name] = f"http://127.0.0.1:{svc.port}"
        pid_file = work / f"{svc.name}.pid"
        running = _running(pid_file)
        if running:
            print(f"{svc.name:8s} already running (pid {running['pid']}): {urls[svc.name]}")
            if svc.name == "mlflow" and _healthy(svc.port, svc.health):
                ensure_mlflow_accounts(params, urls["mlflow"])
            continue
        log = open(work / f"{svc.name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            _command(svc, params),
            env={**env, **mlflow_server_env(params)} if svc.name == "mlflow" else env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        record = {"pid": proc.pid, "started": _start_time(proc.pid), "by": started_by}
        pid_file.write_text(json.dumps(record))
        deadline = time.monotonic() + wait_s
        while not _healthy(svc.port, svc.health) and time.monotonic() < deadline:
            if proc.poll() is not None:
                pid_file.unlink(missing_ok=True)
                raise SystemExit(f"{svc.name} exited; see {work / (svc.name + '.log')}")
            time.sleep(1)
        healthy = _healthy(svc.port, svc.health)
        if svc.name == "mlflow" and healthy:
            ensure_mlflow_accounts(params, urls["mlflow"])
        state = "up" if healthy else "starting (not healthy yet)"
        print(f"{svc.name:8s} {state}: {urls[svc.name]}  (log {work / (svc.name + '.log')})")
    print(login_lines(params, urls))
    return urls


def login_lines(params: Params, urls: dict[str, str], wait_s: float = 30) -> str:
    """How to log in and approve: the URLs, the Airflow and MLflow users and passwords."""
    password = airflow_password(params)
    deadline = time.monotonic() + wait_s
    while password is None and "airflow" in urls and time.monotonic() < deadline:
        time.sleep(1)  # the API server writes the generated password shortly after start
        password = airflow_password(params)
    lines = [""]
    if "airflow" in urls:
        lines += [
            f"Airflow UI   {urls['airflow']}   user {AIRFLOW_USER}   password {password or '?'}",
            f"             (from {airflow_home(params) / PASSWORDS_FILE})",
            "             The DAGs start paused: trigger shortlist_retrain (the play button).",
        ]
    if "mlflow" in urls:
        reviewer, secret = mlflow_accounts(params)["reviewer"]
        lines += [
            f"MLflow UI    {urls['mlflow']}   user {reviewer}   password {secret}",
            f"             (from {mlflow_auth_file(params)}; EDIT on "
            f"{params.promotion.registered_model})",
            f"             approve: Models -> {params.promotion.registered_model} -> the "
            "`challenger` version -> Aliases (pencil) -> add `champion`",
        ]
    if "api" in urls:
        lines += [f"Serving API  {urls['api']}/docs"]
    lines += ["Stop it all  make down"]
    return "\n".join(lines)


#: Seconds after which a leader that has not begun to stop gets its stop signal again.
STOP_RESEND_S = 20.0


def _wait_gone(pid_file: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _running(pid_file) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _running(pid_file) is None


def _children(pid: int) -> set[int]:
    """The live (non-zombie) processes whose parent is `pid` (empty without /proc)."""
    return {child for child, parent, _ in _live_processes() if parent == pid}


def _stop_leader(pid: int, pid_file: Path, svc: Service) -> bool:
    """Send the service's stop signal to its leader and wait up to its timeout for it to
    exit; True when it did. While its children are all still the ones it had when
    signalled, it has not acted on the signal (Airflow standalone has been seen to miss a
    SIGINT): it gets the signal again every STOP_RESEND_S. A leader that has begun to stop
    its children is left to finish (a second SIGINT would interrupt that)."""
    children = _children(pid)
    deadline = time.monotonic() + svc.stop_timeout_s
    os.kill(pid, svc.stop_signal)
    while time.monotonic() < deadline:
        if _wait_gone(pid_file, min(STOP_RESEND_S, deadline - time.monotonic())):
            return True
        now = _children(pid)
        if not children or now != children or time.monotonic() >= deadline:
            return _wait_gone(pid_file, deadline - time.monotonic())
        print(f"{svc.name:8s} has not acted on its stop signal: sending it again")
        os.kill(pid, svc.stop_signal)
    return _running(pid_file) is None


def _live_processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of each process that is not a zombie, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            out.append((int(stat.parent.name), int(fields[1]), int(fields[2])))
    return out


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. Exited members nobody has reaped yet
    (zombies: the stack's leaders are reparented when the starting process exits) run
    nothing and do not count."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if not Path("/proc").is_dir():
        return True
    return any(group == pgid for _, _, group in _live_processes())


def down(params: Params, ports: dict[str, int] | None = None) -> dict[str, str]:
    """Stop the services of the stack's pid files, last started first; returns how each
    ended: "clean" (its own stop signal), "forced" (SIGKILL after its timeout)."""
    work = stack_dir(params)
    ended: dict[str, str] = {}
    for svc in reversed(services(ports or {"mlflow": 0, "airflow": 0, "api": 0})):
        pid_file = work / f"{svc.name}.pid"
        record = _running(pid_file)
        if record is None:
            pid_file.unlink(missing_ok=True)
            continue
        pid = int(record["pid"])
        started = time.monotonic()
        # The leader only: it stops its own children in order (Airflow standalone does).
        how = "clean" if _stop_leader(pid, pid_file, svc) else "forced"
        if how == "forced":
            os.killpg(pid, signal.SIGKILL)
            _wait_gone(pid_file, 5)
        # Whatever the leader left in its group (a worker mid-task) goes with it.
        if _group_alive(pid):
            grace = time.monotonic() + 10
            os.killpg(pid, signal.SIGTERM)
            while _group_alive(pid) and time.monotonic() < grace:
                time.sleep(0.2)
            if _group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        ended[svc.name] = how
        took = time.monotonic() - started
        print(
            f"{svc.name:8s} stopped {'cleanly' if how == 'clean' else 'by SIGKILL'} "
            f"in {took:.1f}s (pid {pid}, started by {record.get('by', '?')})"
        )
    if not ended:
        print("nothing to stop")
    return ended


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shortlist.stack")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--airflow-port", type=int, default=8080)
    parser.add_argument("--api-port", type=int, default=None)
    parser.add_argument("--params", help="params file (default: $SHORTLIST_PARAMS or params.yaml)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    ports = {
        "mlflow": args.mlflow_port,
        "airflow": args.airflow_port,
        "api": args.api_port or params.serving.port,
    }
    if args.action == "up":
        up(params, ports, params_file=args.params)
    else:
        down(params, ports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
