"""`make demo`: Shortlist's main job end to end on the embedded defaults.

    python -m shortlist.demo [--dataset ../shared/datasets/ml-100k] [--set key=value ...]

1. ingest: MovieLens 100K when the dataset directory holds it, else the synthetic
   generator (the embedded default; `dvc repro`'s ingest stage calls this same step);
2. validate: the data contract, with its Data Docs;
3. mlflow: the local stack's MLflow server (127.0.0.1:5000, left running: `make down`),
   with MLflow's basic-auth app: the DAG writes as the pipeline's service account, the
   reviewer's login is printed;
4. retrain: the real `shortlist_retrain` Airflow DAG, once, with `airflow dags test` in
   the local stack's Airflow home (the run shows in the Airflow UI of `make up`), with
   promotion auto-approved: split → towers → ranker → evaluate & bless → bundle into the
   idle slot → canary → register → promote;
5. serve: the API over the promoted bundle, one sample recommendation.

Everything is written under the params' work dir (.shortlist/ by default); at the end it
prints where to look. The demo is a list of steps (`STEPS`, or `--steps a,b`); a step
gets the shared `Demo` state and returns the locations worth printing.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shortlist.config import WORK_PATHS, ConfigError, Params, load_params
from shortlist.errors import DataValidationError, ShortlistError
from shortlist.storage import is_remote

# The embedded default dataset, relative to the project directory: used when neither
# --dataset nor data.path names one (MovieLens 100K when present, else synthetic data).
DEFAULT_DATASET = "../shared/datasets/ml-100k"

# Params that name local paths; made absolute (against the project dir) before the run
# so every stage and every printed location agree whatever the current directory.
PATH_KEYS = tuple(WORK_PATHS)


@dataclass
class Demo:
    """State shared by the steps: params, the dataset path, and what earlier steps made."""

    params: Params
    dataset: Path
    outputs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    mlflow_port: int = 5000


@dataclass(frozen=True)
class Step:
    name: str
    doc: str
    run: Callable[[Demo], dict[str, str]]


def default_dataset(params: Params) -> tuple[Path, bool]:
    """The dataset to import and whether synthetic data may stand in for it: data.path
    when set (imported as configured, no stand-in), else DEFAULT_DATASET (relative to
    the current directory, the project root) with the synthetic fallback."""
    if params.data.path:
        return Path(params.data.path), False
    return Path(DEFAULT_DATASET), True


def ingest_data(params: Params, dataset: Path, fallback: bool = True) -> tuple[dict, str]:
    """Import `dataset` as data.source says into data.dir; returns (manifest, what).

    With data.source `movielens-100k` (the default) and `fallback`, the synthetic
    generator (params' `synth:`) stands in when `dataset` holds no MovieLens 100K, so a
    fresh clone runs the demo, `dvc repro` and the data DAG without any edit. `synth`
    always generates.
    """
    p = params
    source = p.data.source
    if source == "movielens-100k" and fallback and not (dataset / "u.data").is_file():
        source, what = "synth", f"synthetic data ({dataset} has no MovieLens 100K)"
    else:
        what = f"{source} from {dataset}" if source != "synth" else "synthetic data"
    if source == "synth":
        from pipelines import synth

        return synth.run(p, out_dir=p.data.dir), what
    from pipelines import ingest

    return ingest.run(p, source=source, path=str(dataset), out_dir=p.data.dir), what


def _ingest(demo: Demo) -> dict[str, str]:
    manifest, what = ingest_data(demo.params, demo.dataset)
    rows = manifest["rows"]
    n = rows.get("interactions.parquet", rows) if isinstance(rows, dict) else rows
    demo.notes.append(f"data: {what}, {n} interactions, snapshot {manifest['snapshot_id']}")
    return {"dataset": demo.params.data.dir}


def _validate(demo: Demo) -> dict[str, str]:
    from pipelines import validate

    p = demo.params
    report = validate.run(p, data_dir=p.data.dir)
    print(report.summary())
    if not report.success:
        raise DataValidationError(
            f"validation failed; batch quarantined at {report.quarantine_path}"
        )
    out = {"reference": p.validation.reference_dir}
    if report.docs_path:
        out["data docs"] = str(report.docs_path)
    return out


def _mlflow(demo: Demo) -> dict[str, str]:
    from shortlist import stack

    urls = stack.up(
        demo.params,
        {"mlflow": demo.mlflow_port, "airflow": 0, "api": 0},
        only={"mlflow"},
        started_by="make demo",
    )
    return {"mlflow ui": urls["mlflow"], "mlflow logins": str(stack.mlflow_auth_file(demo.params))}


def _retrain(demo: Demo) -> dict[str, str]:
    """`airflow dags test shortlist_retrain`, auto-approved, in the stack's Airflow home
    and against the stack's MLflow: the run is listed in the Airflow UI of `make up`."""
    import json
    import subprocess

    import yaml

    from shortlist.stack import BIN, airflow_home, stack_env

    p = demo.params
    work = Path(p.project.work_dir)
    params_file = work / "demo-params.yaml"
    params_file.write_text(yaml.safe_dump(p.model_dump(), sort_keys=False))
    home = airflow_home(p)
    home.mkdir(parents=True, exist_ok=True)
    env = stack_env(p, {"mlflow": demo.mlflow_port}, params_file)
    env["AIRFLOW__CORE__PARALLELISM"] = "2"
    log_path = work / "demo-retrain.log"
    with open(log_path, "w") as log:
        subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"], env=env, stdout=log, stderr=log, check=True
        )
        conf = {"params_file": str(params_file), "overrides": ["promotion.auto_approve=true"]}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        proc = subprocess.Popen(
            [
                str(BIN / "airflow"),
                "dags",
                "test",
                "shortlist_retrain",
                stamp,
                "-c",
                json.dumps(conf),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for line in proc.stdout:  # progress: one line per finished task
            log.write(line)
            done = re.search(r"\[DAG TEST\] end task task_id=(\w+)", line)
            if done:
                print(f"    task {done.group(1)} finished", flush=True)
        proc.wait()
    if proc.returncode != 0:
        raise ShortlistError(f"the retrain DAG failed; its log is {log_path}")
    from pipelines import rollout

    status = rollout.status(p)
    live = status.get("live") or {}
    if not live.get("bundle_id"):
        raise ShortlistError(f"the retrain DAG ended without a live bundle; see {log_path}")
    demo.notes.append(f"live bundle: {live['bundle_id']} in slot {live.get('slot')}")
    demo.notes.append(f"airflow run: shortlist_retrain at {stamp} (conf: auto-approve)")
    return {"retrain log": str(log_path), "bundles": p.bundle.root, "airflow home": str(home)}


def _serve(demo: Demo) -> dict[str, str]:
    """Start the API on a free port, ask for one user's top 10, stop it."""
    import socket
    import threading

    import httpx
    import uvicorn

    from shortlist.serving.app import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(demo.params), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        answer = httpx.post(f"{url}/recommend", json={"user_id": "1", "k": 10}, timeout=30)
        answer.raise_for_status()
        body = answer.json()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    titles = _titles(demo)
    print(f'POST /recommend {{"user_id": "1", "k": 10}} -> bundle {body["bundle_id"]}')
    for item in body["items"]:
        print(f"  {item['position']:>2}. {titles.get(item['item_id'], item['item_id'])}")
    demo.notes.append(
        f"sample: user 1 got {len(body['items'])} items from bundle {body['bundle_id']}"
    )
    return {"api (make up)": f"http://127.0.0.1:{demo.params.serving.port}/docs"}


def _titles(demo: Demo) -> dict[str, str]:
    import pandas as pd

    items = pd.read_parquet(
        Path(demo.params.data.dir) / "items.parquet", columns=["item_id", "title"]
    )
    return dict(zip(items["item_id"].astype(str), items["title"], strict=True))


STEPS: list[Step] = [
    Step("ingest", "import the dataset into the contract's Parquet tables", _ingest),
    Step("validate", "data contract (Great Expectations) and Data Docs", _validate),
    Step("mlflow", "MLflow tracking server and registry on SQLite", _mlflow),
    Step("retrain", "the shortlist_retrain Airflow DAG, auto-approved", _retrain),
    Step("serve", "the serving API over the promoted bundle", _serve),
]


def absolute_paths(params: Params, base: Path) -> Params:
    """Params with every relative local path in PATH_KEYS resolved against `base`."""
    changes = {}
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(params, section), name)
        if value and not is_remote(value) and not Path(value).is_absolute():
            changes[key] = str((base / value).resolve())
    return params.with_overrides(changes) if changes else params


def run(demo: Demo, steps: list[Step] | None = None) -> Demo:
    """Run the steps in order; a failing step raises and stops the demo."""
    steps = STEPS if steps is None else steps
    for i, step in enumerate(steps, 1):
        print(f"\n[{i}/{len(steps)}] {step.name}: {step.doc}", flush=True)
        started = time.perf_counter()
        made = step.run(demo)
        demo.outputs.update(made)
        print(f"[{i}/{len(steps)}] {step.name} done in {time.perf_counter() - started:.1f}s")
    return demo


def _report(demo: Demo) -> str:
    width = max((len(k) for k in demo.outputs), default=0)
    lines = ["", "Shortlist demo finished.", *demo.notes, "", "Outputs:"]
    lines += [f"  {k:<{width}}  {v}" for k, v in demo.outputs.items()]
    if "mlflow ui" in demo.outputs:
        from shortlist.stack import mlflow_accounts

        reviewer, password = mlflow_accounts(demo.params)["reviewer"]
        lines += [
            "",
            "Where to look:",
            f"  MLflow UI       {demo.outputs['mlflow ui']}  (Models -> "
            f"{demo.params.promotion.registered_model}: versions, tags, aliases; runs, plots)",
            f"                  user {reviewer}   password {password}",
            "  Canary report   shortlist status --json; canary.json in the live slot",
            "  Airflow UI      make up, then http://127.0.0.1:8080 (it prints the user and",
            "                  password): DAG shortlist_retrain lists this demo's run",
            "  Serving API     make up, then http://127.0.0.1:"
            f"{demo.params.serving.port}/docs (POST /recommend, GET /metrics)",
            "  Stop servers    make down (stops the MLflow server above too)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shortlist.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="the source to import (default: data.path, else "
        f"{DEFAULT_DATASET}); synthetic data when MovieLens 100K is absent",
    )
    parser.add_argument("--params", help="params file (default: $SHORTLIST_PARAMS or params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--steps", help=f"comma-separated subset of: {', '.join(s.name for s in STEPS)}"
    )
    parser.add_argument("--mlflow-port", type=int, default=5000)
    args = parser.parse_args(argv)
    wanted = args.steps.split(",") if args.steps else [s.name for s in STEPS]
    unknown = set(wanted) - {s.name for s in STEPS}
    if unknown:
        parser.error(f"unknown steps: {', '.join(sorted(unknown))}")
    try:
        params = load_params(args.params, args.overrides)
        demo = Demo(
            params=absolute_paths(params, Path.cwd()),
            dataset=Path(args.dataset) if args.dataset else default_dataset(params)[0],
            mlflow_port=args.mlflow_port,
        )
        run(demo, [s for s in STEPS if s.name in wanted])
    except (ConfigError, ShortlistError, FileNotFoundError) as exc:
        print(f"shortlist demo: {exc}", file=sys.stderr)
        return 1
    print(_report(demo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
