"""The `shortlist` command line: the contract other tools and people script against.

Every command loads params.yaml (or --params / $SHORTLIST_PARAMS) into one typed object,
applies `--set key=value` overrides, and calls the same stage function that DVC and the
Airflow DAGs call (in `pipelines/`). On failure it exits non-zero with a one-line reason;
SHORTLIST_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from shortlist.config import ConfigError, Params, load_params
from shortlist.errors import ShortlistError

Handler = Callable[[Params, argparse.Namespace], int | None]


def _ingest(p: Params, a: argparse.Namespace) -> None:
    from pipelines import ingest

    mapping = dict(kv.split("=", 1) for kv in a.map or [])
    manifest = ingest.run(
        p,
        source=a.source,
        path=a.path,
        out_dir=a.out,
        items_path=a.items,
        users_path=a.users,
        column_map=mapping,
    )
    print(f"ingested {manifest['rows']} into {a.out} (snapshot {manifest['snapshot_id']})")


def _synth(p: Params, a: argparse.Namespace) -> None:
    from pipelines import synth

    manifest = synth.run(
        p, users=a.users, items=a.items, interactions=a.interactions, seed=a.seed, out_dir=a.out
    )
    print(f"synthesised {manifest['rows']} into {a.out} (snapshot {manifest['snapshot_id']})")


def _validate(p: Params, a: argparse.Namespace) -> int:
    from pipelines import validate

    report = validate.run(p, data_dir=a.data, reference_dir=a.reference)
    print(report.summary())
    return 0 if report.success else 1


def _split(p: Params, a: argparse.Namespace) -> None:
    from pipelines import split

    manifest = split.run(p, data_dir=a.data, out_dir=a.out)
    print(json.dumps(manifest["counts"]))


def _tune(p: Params, a: argparse.Namespace) -> None:
    import logging

    from pipelines import tune

    # One line per trial while the budget runs (the stage logs them).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    doc = tune.run(p, split_dir=a.split, budget_minutes=a.budget_minutes, out_path=a.out)
    towers = doc["towers"]
    print(
        f"validation score defaults {towers['defaults']:.4f} -> tuned {towers['best']:.4f} "
        f"({sum(towers['trials'].values())} towers trials, {doc['seconds']:.0f} s); "
        f"wrote {a.out or p.tuning.path}"
    )
    print(json.dumps(doc["best"], indent=2))


def _train_towers(p: Params, a: argparse.Namespace) -> None:
    from pipelines import train_towers

    result = train_towers.run(p, split_dir=a.split, out_dir=a.out)
    print(json.dumps(result, indent=2, default=str))


def _train_ranker(p: Params, a: argparse.Namespace) -> None:
    from pipelines import train_ranker

    result = train_ranker.run(p, split_dir=a.split, model_dir=a.model)
    print(json.dumps(result, indent=2, default=str))


def _evaluate(p: Params, a: argparse.Namespace) -> None:
    from pipelines import evaluate

    result = evaluate.run(
        p, model_dir=a.model, split_dir=a.split, out_dir=a.out, champion_dir=a.champion
    )
    print(result["table"])


def _export_recs(p: Params, a: argparse.Namespace) -> None:
    from pipelines import export_recs

    n = export_recs.run(
        p,
        model_dir=a.model,
        data_dir=a.data,
        users_csv=a.users,
        k=a.k,
        out_csv=a.out,
        stage=a.stage,
    )
    print(f"wrote {n} rows to {a.out}")


def _build_bundle(p: Params, a: argparse.Namespace) -> None:
    from pipelines import build_bundle

    result = build_bundle.run(p, model_dir=a.model, data_dir=a.data, root=a.root)
    print(result["bundle_id"])


def _canary(p: Params, a: argparse.Namespace) -> int:
    from pipelines import canary

    report = canary.run(p, root=a.root, slot=a.slot)
    print(json.dumps(report, indent=2, default=str))
    return 0 if report["passed"] else 1


def _promote(p: Params, a: argparse.Namespace) -> None:
    from pipelines import rollout

    print(json.dumps(rollout.promote(p, root=a.root, bundle_id=a.bundle), default=str))


def _rollback(p: Params, a: argparse.Namespace) -> None:
    from pipelines import rollout

    result = rollout.rollback(p, root=a.root, to=a.to, expected_live=a.expect_live)
    print(json.dumps(result, default=str))


def _status(p: Params, a: argparse.Namespace) -> int:
    from pipelines import rollout

    status = rollout.status(p, root=a.root, servers=a.server, registry=not a.no_registry)
    if a.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print(rollout.format_status(status))
    return 1 if a.check and status["disagreements"] else 0


def _feedback(p: Params, a: argparse.Namespace) -> None:
    from pipelines import feedback

    result = feedback.run(
        p,
        start=feedback.parse_time(a.start),
        end=feedback.parse_time(a.end),
        land_batches=a.land,
        force=a.force,
    )
    print(feedback.to_json(result) if a.json else feedback.summary_line(result))


def _simulate(p: Params, a: argparse.Namespace) -> None:
    from shortlist import simulate

    spec = simulate.SimSpec(
        users=a.users,
        items=a.items,
        interactions=a.interactions,
        rounds=a.rounds,
        retrain_every=a.retrain_every,
        k=a.k,
        seed=p.project.seed if a.seed is None else a.seed,
        promote=a.promote,
    )
    policies = {n: simulate.POLICIES[n] for n in (a.policy or list(simulate.POLICIES))}
    result = simulate.simulate(
        p,
        spec,
        a.out,
        policies=policies,
        bandit_users=a.bandit_users,
        on_round=lambda r: print(simulate.round_line(r), flush=True),
    )
    print(json.dumps(result["summary"], indent=2))
    if "bandit_first_users" in result:
        print(json.dumps(result["bandit_first_users"], indent=2))


def _params(p: Params, a: argparse.Namespace) -> int:
    from pathlib import Path

    from shortlist.config import DEFAULT_PARAMS_FILE, render_params

    text = render_params(p)
    if a.check:
        path = Path(a.out or DEFAULT_PARAMS_FILE)
        if path.exists() and path.read_text() == text:
            return 0
        print(
            f"{path} is not what shortlist.config generates: run `shortlist params --out {path}`",
            file=sys.stderr,
        )
        return 1
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}")
    else:
        sys.stdout.write(text)
    return 0


def _serve(p: Params, a: argparse.Namespace) -> None:
    from shortlist.serving.app import serve

    serve(p, root=a.root, host=a.host, port=a.port)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", help="params file (default: $SHORTLIST_PARAMS or params.yaml)")
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params.yaml value, e.g. --set towers.epochs=3 (repeatable)",
    )
    parser = argparse.ArgumentParser(
        prog="shortlist", description="MLOps for two-stage recommenders."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, parents=[common], help=help_, description=help_)
        cmd.set_defaults(handler=handler)
        return cmd

    c = add("ingest", _ingest, "import a source into a dataset directory (Parquet)")
    c.add_argument(
        "--source",
        required=True,
        choices=["movielens-100k", "movielens-1m", "movielens-latest", "csv"],
    )
    c.add_argument("--path", required=True, help="source directory, or the interactions file")
    c.add_argument("--items", help="items file (csv source)")
    c.add_argument("--users", help="users file (csv source)")
    c.add_argument(
        "--map",
        action="append",
        metavar="CONTRACT=SOURCE",
        help="column mapping for the csv source, e.g. --map user_id=uid (repeatable)",
    )
    c.add_argument("--out", required=True, help="dataset directory (path or s3://)")

    c = add("synth", _synth, "generate a synthetic dataset with known structure")
    c.add_argument("--users", type=int, required=True)
    c.add_argument("--items", type=int, required=True)
    c.add_argument("--interactions", type=int, required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", required=True)

    c = add("validate", _validate, "run the data contract; exit 1 and quarantine on failure")
    c.add_argument("data")
    c.add_argument("--reference", help="reference snapshot directory (default from params)")

    c = add("split", _split, "temporal train/validation/test split")
    c.add_argument("data")
    c.add_argument("--out", required=True)

    c = add("tune", _tune, "search the towers' and ranker's knobs on validation, in a budget")
    c.add_argument("split")
    c.add_argument("--budget-minutes", type=float, default=None)
    c.add_argument("--out", help="tuning file (default: params tuning.path)")

    c = add("train-towers", _train_towers, "train the two-tower retrieval model")
    c.add_argument("split")
    c.add_argument("--out", required=True)

    c = add("train-ranker", _train_ranker, "train the ranker beside the towers in MODEL_DIR")
    c.add_argument("split")
    c.add_argument("--model", required=True)

    c = add("evaluate", _evaluate, "full-ranking evaluation against the baselines")
    c.add_argument("model")
    c.add_argument("split")
    c.add_argument("--out", help="where metrics.json and report.md go (default: MODEL/eval)")
    c.add_argument("--champion", help="the live model's directory, to bless against it too")

    c = add("export-recs", _export_recs, "write top-K recommendations for a list of users")
    c.add_argument("model")
    c.add_argument("--data", required=True)
    c.add_argument("--users", required=True, help="CSV with a user_id column")
    c.add_argument("--k", type=int, default=20)
    c.add_argument("--stage", choices=["retrieval", "funnel"], default=None)
    c.add_argument("--out", required=True)

    c = add("build-bundle", _build_bundle, "embed items, build the index, write the idle slot")
    c.add_argument("model")
    c.add_argument("--data", required=True)
    c.add_argument("--root", help="artifact root, a directory or s3:// (default from params)")

    c = add("promote", _promote, "verify the idle bundle whole, then flip the live pointer to it")
    c.add_argument("--root")
    c.add_argument("--bundle", help="refuse unless the idle slot holds this bundle id")

    c = add("rollback", _rollback, "go back once to the bundle live before the current one")
    c.add_argument("--root")
    c.add_argument("--to", help="refuse unless this is the bundle rollback goes back to")
    c.add_argument("--expect-live", help="refuse unless this bundle id is still live")

    c = add("canary", _canary, "check a slot: ANN recall vs exact, live-path recall, consistency")
    c.add_argument("--root")
    c.add_argument("--slot", choices=["idle", "live", "blue", "green"], default="idle")

    c = add("status", _status, "pointer, slots, registry aliases, servers, disagreements")
    c.add_argument("--root")
    c.add_argument("--json", action="store_true")
    c.add_argument(
        "--server", action="append", default=[], metavar="URL", help="a running server (repeat)"
    )
    c.add_argument("--no-registry", action="store_true", help="do not query MLflow")
    c.add_argument("--check", action="store_true", help="exit 1 when anything disagrees")

    c = add("feedback", _feedback, "join impressions and events of a closed window into a batch")
    c.add_argument("--end", help="window end, unix seconds or ISO 8601 (default: latest closed)")
    c.add_argument("--start", help="window start (default: end - feedback.window_seconds)")
    c.add_argument("--land", action="store_true", help="merge all batches into data.dir (gated)")
    c.add_argument("--force", action="store_true", help="join a window that is still open")
    c.add_argument("--json", action="store_true")

    c = add("simulate", _simulate, "closed-loop simulation with ground-truth users")
    c.add_argument("--rounds", type=int, default=10, help="serving rounds after the first bundle")
    c.add_argument("--retrain-every", type=int, default=1, help="retrain every N rounds")
    c.add_argument("--users", type=int, default=300)
    c.add_argument("--items", type=int, default=400)
    c.add_argument("--interactions", type=int, default=6000, help="generated history")
    c.add_argument("--k", type=int, default=10, help="list length")
    c.add_argument("--seed", type=int, default=None, help="default: project.seed")
    c.add_argument("--policy", action="append", choices=["no_exploration", "exploration_ips"])
    c.add_argument("--promote", choices=["blessed", "always"], default="blessed")
    c.add_argument("--bandit-users", type=int, default=0, help="the bandit experiment's users")
    c.add_argument("--out", default=".shortlist/simulate", help="working and result directory")

    c = add("params", _params, "write params.yaml: every default (and --set) with its description")
    c.set_defaults(reads_params_file=False)
    c.add_argument("--out", help="file to write (default: standard output)")
    c.add_argument(
        "--check", action="store_true", help="exit 1 unless --out (or params.yaml) is up to date"
    )

    c = add("serve", _serve, "serve the live bundle over HTTP")
    c.add_argument("--root")
    c.add_argument("--host", default=None)
    c.add_argument("--port", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = os.environ.get("SHORTLIST_DEBUG") == "1"
    try:
        if getattr(args, "reads_params_file", True):
            params = load_params(args.params, args.overrides)
        else:  # `params` renders the defaults: a stale params file must not stop it
            params = Params().with_overrides(args.overrides)
        code = args.handler(params, args)
    except (ConfigError, ShortlistError, FileNotFoundError) as exc:
        if debug:
            raise
        print(f"shortlist {args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the CLI contract: one line, non-zero
        if debug:
            raise
        print(f"shortlist {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
