"""The cluster of one state dir: its ports and secrets (generated once into
<state>/cluster.json, 0600), pid files, logs, URLs and the environment a client needs;
`Cluster._spawn` starts one service in its own session and records its pid."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import subprocess
from pathlib import Path
from typing import Any

from shortlist.cluster.base import (
    BIN,
    HOST,
    REPO,
    RESERVED_PORTS,
    S3_ACCESS_KEY,
    S3_REGION,
    SERVICES,
    STATE_FILE,
    WORKERS,
    ClusterError,
)
from shortlist.cluster.procs import as_user, bindable, free_port, process_tree, reap, start_time


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
        if ports and not self.running() and not all(bindable(p) for p in ports.values()):
            found.pop("ports")  # nothing runs and a port chosen last time is taken now
        if "ports" not in found:
            taken: set[int] = set()
            names = ["postgres", "redis", "mlflow", "airflow", "s3"]
            names += ["s3_grpc", "master", "master_grpc", "volume", "volume_grpc"]
            names += ["filer", "filer_grpc"]
            names += [f"worker_{i}_logs" for i in range(1, WORKERS + 1)]
            ports = {n: free_port(taken) for n in names}
            # SeaweedFS dials its admin gRPC port at admin port + 10000: choose them together.
            for _ in range(200):
                admin = free_port(taken, 10_000, 22_000)
                grpc = admin + 10_000  # below 32768, the kernel's ephemeral range
                if grpc not in taken and grpc not in RESERVED_PORTS and bindable(grpc):
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
        reap(pid)
        if start_time(pid) is None or start_time(pid) != rec.get("started"):
            return None
        return rec

    def running(self) -> dict[str, int]:
        return {s.name: rec["pid"] for s in SERVICES if (rec := self.record(s.name))}

    def processes(self) -> dict[int, str | None]:
        """Every live process the cluster's services run (leaders, their groups and
        descendants), with its start time: what `down` must leave nothing of."""
        out: dict[int, str | None] = {}
        for pid in self.running().values():
            for p in process_tree(pid):
                out[p] = start_time(p)
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
            **as_user(user),
        )
        log.close()
        rec = {"pid": proc.pid, "started": start_time(proc.pid), "cmd": cmd[:3]}
        self._pid_file(name).write_text(json.dumps(rec))
        return proc

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"
