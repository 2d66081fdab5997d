"""The long-lived local stack: MLflow UI, Airflow (standalone), the serving API.

`python -m shortlist.stack up|down|status` (what `make up` / `make down` run). Each
service runs in the background from the project's venv, with its log and pid file
under `<work_dir>/stack/`; `down` stops them cleanly (Airflow with SIGINT: SIGTERM
would orphan its scheduler, triggerer and API server). Everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from shortlist.config import Params, load_params

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    health: str
    stop_signal: int = signal.SIGTERM


def services(ports: dict[str, int]) -> list[Service]:
    return [
        Service("mlflow", ports["mlflow"], "/health"),
        Service("airflow", ports["airflow"], "/api/v2/monitor/health", signal.SIGINT),
        Service("api", ports["api"], "/health"),
    ]


def backend_store(params: Params) -> str:
    """The MLflow server's store: the params' SQLite store, so CLI runs made without a
    server (tracking straight into that file) show up in the UI too."""
    uri = params.mlflow.tracking_uri
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return f"sqlite:///{Path(params.project.work_dir).resolve() / 'mlflow.db'}"


def _command(service: Service, params: Params, work: Path) -> list[str]:
    if service.name == "mlflow":
        return [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend_store(params),
            "--artifacts-destination",
            str(work.parent / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(service.port),
            "--workers",
            "1",
        ]
    if service.name == "airflow":
        return [str(BIN / "airflow"), "standalone"]
    return [str(BIN / "shortlist"), "serve", "--port", str(service.port)]


def stack_env(work: Path, ports: dict[str, int]) -> dict[str, str]:
    """Environment shared by the stack: one MLflow, one Airflow home, few workers."""
    project = Path.cwd()
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "AIRFLOW_HOME": str(work / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(project / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__PORT": str(ports["airflow"]),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{ports['airflow']}",
        "SHORTLIST_PARAMS": str(project / "params.yaml"),
        "DVC_NO_ANALYTICS": "1",
    }


def _healthy(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status < 500
    except Exception:
        return False


def _pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None


def up(
    params: Params, ports: dict[str, int], wait_s: float = 180, only: set[str] | None = None
) -> dict[str, str]:
    """Start the services (all, or `only` those named); returns their URLs."""
    work = Path(params.project.work_dir).resolve() / "stack"
    work.mkdir(parents=True, exist_ok=True)
    env = stack_env(work, ports)
    urls = {}
    for svc in services(ports):
        if only is not None and svc.name not in only:
            continue
        urls[svc.name] = f"http://127.0.0.1:{svc.port}"
        pid_file = work / f"{svc.name}.pid"
        if _pid(pid_file):
            print(f"{svc.name:8s} already running (pid {_pid(pid_file)})")
            continue
        log = open(work / f"{svc.name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            _command(svc, params, work),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + wait_s
        while not _healthy(svc.port, svc.health) and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{svc.name} exited; see {work / (svc.name + '.log')}")
            time.sleep(1)
        state = "up" if _healthy(svc.port, svc.health) else "starting (not healthy yet)"
        print(f"{svc.name:8s} {state}: http://127.0.0.1:{svc.port}  log {svc.name}.log")
    if "airflow" in urls:
        password = work / "airflow" / "simple_auth_manager_passwords.json.generated"
        print(f"Airflow admin password: {password}")
    return urls


def down(params: Params, ports: dict[str, int]) -> None:
    work = Path(params.project.work_dir).resolve() / "stack"
    for svc in reversed(services(ports)):
        pid_file = work / f"{svc.name}.pid"
        pid = _pid(pid_file)
        if pid is None:
            pid_file.unlink(missing_ok=True)
            continue
        os.killpg(pid, svc.stop_signal)
        deadline = time.monotonic() + 30
        while _pid(pid_file) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _pid(pid_file):
            os.killpg(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        print(f"{svc.name:8s} stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shortlist.stack")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--airflow-port", type=int, default=8080)
    parser.add_argument("--api-port", type=int, default=None)
    args = parser.parse_args(argv)
    params = load_params()
    ports = {
        "mlflow": args.mlflow_port,
        "airflow": args.airflow_port,
        "api": args.api_port or params.serving.port,
    }
    (up if args.action == "up" else down)(params, ports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
