"""The local stack's bookkeeping: one Airflow home and MLflow for demo and stack, and
`down` stopping exactly the processes its pid files name (the browser tests stop the
real services; here a stand-in process keeps it cheap)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from shortlist import stack
from shortlist.config import Params


def _start(params: Params, name: str, code: str = "import time; time.sleep(300)"):
    folder = stack.stack_dir(params)
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.monotonic() + 10
    while stack._start_time(proc.pid) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    record = {"pid": proc.pid, "started": stack._start_time(proc.pid), "by": "test"}
    (folder / f"{name}.pid").write_text(json.dumps(record))
    return proc


def test_demo_and_stack_share_one_airflow_home_and_mlflow(params: Params) -> None:
    env = stack.stack_env(params, {"mlflow": 5123, "airflow": 8123})
    assert env["AIRFLOW_HOME"] == str(Path(params.project.work_dir).resolve() / "airflow")
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5123"
    assert env["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:8123"
    # the demo runs its DAG with only MLflow known: same home, no Airflow port
    demo_env = stack.stack_env(params, {"mlflow": 5123}, "/somewhere/params.yaml")
    assert demo_env["AIRFLOW_HOME"] == env["AIRFLOW_HOME"]
    assert demo_env["SHORTLIST_PARAMS"] == "/somewhere/params.yaml"
    assert "AIRFLOW__API__PORT" not in demo_env


def test_down_stops_what_the_pid_files_name_and_nothing_else(params: Params) -> None:
    mlflow = _start(params, "mlflow")
    # a pid file whose process has ended and whose pid now names another process
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
    )
    stale = {"pid": other.pid, "started": "1", "by": "test"}
    (stack.stack_dir(params) / "api.pid").write_text(json.dumps(stale))
    try:
        ended = stack.down(params)
        assert ended == {"mlflow": "clean"}
        assert mlflow.wait(timeout=10) is not None  # reaped: no zombie counted as alive
        assert other.poll() is None, "a process the stack did not start was signalled"
        assert not list(stack.stack_dir(params).glob("*.pid"))
        assert stack.down(params) == {}
    finally:
        for proc in (mlflow, other):
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()


#: A leader with one child that stops it on its `act_on`-th SIGINT, `linger` seconds later;
#: it notes each SIGINT in `log`.
LEADER = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
log, act_on, linger, seen = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), []
def on_sigint(*_):
    seen.append(1)
    with open(log, "a") as f:
        f.write("stopping\\n" if len(seen) == act_on else "ignored\\n")
    if len(seen) == act_on:
        child.terminate()
        child.wait()
        time.sleep(linger)
        sys.exit(0)
signal.signal(signal.SIGINT, on_sigint)
while True:
    time.sleep(0.05)
"""


def _leader(params: Params, log: Path, act_on: int, linger: float) -> subprocess.Popen:
    code = f"import sys; sys.argv[1:] = {[str(log), str(act_on), str(linger)]!r}\n{LEADER}"
    proc = _start(params, "airflow", code)
    deadline = time.monotonic() + 10
    while not stack._children(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def test_a_leader_that_missed_its_stop_signal_gets_it_again(params: Params, tmp_path, monkeypatch):
    """A leader whose children are unchanged after STOP_RESEND_S is signalled again, and
    stops cleanly; one that has begun stopping its children is not interrupted."""
    monkeypatch.setattr(stack, "STOP_RESEND_S", 1.0)
    svc = stack.Service("airflow", 0, "/", signal.SIGINT, 15.0)
    pid_file = stack.stack_dir(params) / "airflow.pid"
    for act_on, linger, want in [(2, 0.0, "ignored\nstopping\n"), (1, 2.5, "stopping\n")]:
        log = tmp_path / f"leader-{act_on}.log"
        proc = _leader(params, log, act_on, linger)
        try:
            assert stack._children(proc.pid), "the leader's child did not start"
            assert stack._stop_leader(proc.pid, pid_file, svc)
            assert proc.wait(timeout=10) == 0
            assert log.read_text() == want
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()


def test_airflow_password_is_read_from_the_generated_file(params: Params) -> None:
    assert stack.airflow_password(params) is None
    home = stack.airflow_home(params)
    home.mkdir(parents=True)
    (home / stack.PASSWORDS_FILE).write_text('{"admin": "s3cret"}')
    assert stack.airflow_password(params) == "s3cret"
    text = stack.login_lines(params, {"airflow": "http://127.0.0.1:8080"}, wait_s=0)
    assert "user admin   password s3cret" in text


def test_mlflow_runs_with_basic_auth_and_secrets_kept_0600_and_reused(params: Params) -> None:
    svc = stack.services({"mlflow": 5123, "airflow": 0, "api": 0})[0]
    command = stack._command(svc, params)
    assert command[-2:] == ["--app-name", "basic-auth"]
    server_env = stack.mlflow_server_env(params)
    config = Path(server_env["MLFLOW_AUTH_CONFIG_PATH"])
    assert config.parent == stack.stack_dir(params)
    assert "default_permission = READ" in config.read_text()
    secrets_file = stack.mlflow_auth_file(params)
    assert secrets_file.parent == Path(params.project.work_dir).resolve()
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    first = json.loads(secrets_file.read_text())
    assert server_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == first["admin_password"]
    assert server_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == first["secret_key"]
    assert len(set(first.values())) == len(first), "every secret is its own"
    assert stack.mlflow_server_env(params) == server_env  # reused on restart
    # the processes the stack starts write as the pipeline's service account
    env = stack.stack_env(params, {"mlflow": 5123, "airflow": 8123})
    assert env["MLFLOW_TRACKING_USERNAME"] == stack.PIPELINE_USER
    assert env["MLFLOW_TRACKING_PASSWORD"] == first["pipeline_password"]
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in env
    text = stack.login_lines(params, {"mlflow": "http://127.0.0.1:5123"}, wait_s=0)
    assert f"user {stack.REVIEWER_USER}   password {first['reviewer_password']}" in text
