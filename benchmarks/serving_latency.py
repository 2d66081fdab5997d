"""Serving latency: p50/p95/p99 and throughput of POST /recommend at 100k and 1M items.

d=64 towers trained for one epoch on a small synthetic dataset (shortlist's generator,
latent structure), with a ranker beside them (trained on a few hundred requests: its
serving cost is measured here, not its quality). For each catalog size, a synthetic
catalog of that many items (same generator; items the towers never saw are embedded by
their content: genres, title words, year) and a real bundle (`build_bundle`: full catalog re-embedding +
FAISS index, flat up to `--flat-max` items, IVF-Flat above), ANN recall@10/@100 of that
index against exact search for real user queries, then one `shortlist serve` process on
127.0.0.1 and a bounded closed-loop load generator:
concurrency 1 for latency, then `--concurrency` clients for throughput. Each request
retrieves the top `ranker.candidates` (200), ranks them (the bundle's ranker when it
has one, else the retrieval score) and returns k=20. `--ranker-order` picks which order
the bundled ranker serves: the network (`ranker`, the costlier) or the item-item blend
(`blend`: retrieval score plus EASE score, `shortlist.ranking.item_item`), whichever
would win on this synthetic data, so the cost of each is measured on purpose.

Then the swap under load at that catalog size: a second bundle (towers trained with
another seed) is built into the idle slot and, while 2 clients keep sending requests,
promoted and rolled back (`shortlist.serving.swapload`, the swap test's scenario):
failed requests, responses mixing bundles (every item checked against the bundle the
response names, every personalised score recomputed with that bundle's user tower),
p99 in steady state vs during the swaps, and how fast the rollback is visible.

    .venv/bin/python benchmarks/serving_latency.py            # 100k and 1M (~10-15 min)
    .venv/bin/python benchmarks/serving_latency.py --sizes 20000 --requests 500   # smoke

Writes benchmarks/results/serving_latency.json. Latencies are client-side (HTTP on
loopback included) on this machine, which other processes share: the load average is
recorded beside every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from shortlist.config import load_params
from shortlist.serving.loadgen import free_port, run_load, summarise, wait_ready

if __package__:  # imported as benchmarks.<name>
    from .provenance import cpu_probe, provenance
else:  # run as a script: benchmarks/ is sys.path[0]
    from provenance import cpu_probe, provenance

REPO = Path(__file__).resolve().parents[1]


def _params(work: Path, n_items: int, args):
    big = n_items > args.flat_max
    return load_params(REPO / "params.yaml", args.overrides).with_overrides(
        {
            "project.work_dir": str(work),
            "towers.embedding_dim": 64,
            "towers.epochs": 1,
            "towers.threads": 2,
            "ranker.candidates": 200,
            "index.type": "ivf_flat" if big else "flat",
            **({"index.nlist": args.nlist} if args.nlist else {}),
            **({"index.nprobe": args.nprobe} if args.nprobe else {}),
            "bundle.root": str(work / "bundles"),
            "bundle.staging_dir": str(work / "staging"),
            "bundle.cache_dir": str(work / "bundle-cache"),
            "serving.impressions_dir": str(work / "impressions"),
            "serving.log_level": "warning",
            "mlflow.tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        }
    )


def _train(params, data_dir: str, model_dir: str, with_ranker: bool, order: str = "ranker") -> dict:
    from shortlist.data.io import read_dataset
    from shortlist.models.fit import train_two_tower

    ds = read_dataset(data_dir)
    inter = ds.interactions
    cut = inter["timestamp"].quantile(0.9)
    train, validation = inter[inter["timestamp"] <= cut], inter[inter["timestamp"] > cut]
    t0 = time.perf_counter()
    retriever, _ = train_two_tower(
        params,
        train,
        validation,
        ds.items,
        ds.users,
        progress=False,
        mlflow_run=False,
        out_dir=model_dir,
    )
    out = {"towers_seconds": round(time.perf_counter() - t0, 1), "ranker": None}
    if with_ranker:
        try:
            from shortlist.ranking.train import train_ranker

            # The ranker's serving cost is measured here, not its quality: train it on a
            # few hundred validation requests, one epoch.
            keep = (
                validation["user_id"]
                .drop_duplicates()
                .sample(min(200, validation["user_id"].nunique()), random_state=0)
            )
            validation = validation[validation["user_id"].isin(set(keep))]
            t0 = time.perf_counter()
            # Its catalog: the items seen in the interactions (others score with zero
            # item statistics), so training does not re-embed a 1M catalog.
            catalog = sorted(
                set(train["item_id"].astype(str)) | set(validation["item_id"].astype(str))
            )
            ranker, _ = train_ranker(
                params.with_overrides({"ranker.epochs": 1}),
                retriever,
                train,
                validation,
                ds.items,
                ds.users,
                catalog=catalog,
                progress=False,
                mlflow_run=False,
            )
            _serve_order(ranker, order, pd.concat([train, validation]), params)
            ranker.save(model_dir)
            out["ranker"] = {"seconds": round(time.perf_counter() - t0, 1), "order": order}
        except Exception as exc:  # noqa: BLE001 - reported, the benchmark goes on without
            out["ranker"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _serve_order(ranker, order: str, seen, params) -> None:
    """Make `ranker` serve `order` whatever its decision picked on this synthetic data."""
    from shortlist.ranking.item_item import fit_ease

    if order == "blend":
        rp = params.ranker
        ranker.item_item = fit_ease(
            seen,
            ranker.space.item_index(),
            l2=rp.ease_l2,
            neighbours=rp.ease_neighbours,
            max_items=rp.ease_max_items,
        )
        ranker.meta["blend_weight"] = ranker.meta.get("blend_weight") or 0.3
    ranker.meta["order"] = order


def _recall(location: str, n_queries: int) -> dict:
    from shortlist.bundle.bundle import load_bundle
    from shortlist.index.ann import measure_recall
    from shortlist.serving.recommend import prepare

    bundle = load_bundle(location)
    sb = prepare(bundle, location)
    users = sorted(bundle.histories)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(users), min(n_queries, len(users)), replace=False)
    now = time.time()
    q = np.vstack(
        [sb.encoder.embed(users[i], bundle.histories[users[i]], now) for i in pick]
    ).astype(np.float32)
    m = measure_recall(bundle.index, bundle.item_vectors, q, (10, 100))
    return {
        "queries": len(q),
        **{key: round(v, 4) for key, v in m.items() if key.startswith(("recall", "strict"))},
        "index_type": bundle.manifest.index_type,
        "index_params": bundle.manifest.index_params,
        "ranker_in_bundle": bundle.ranker is not None,
        "users": users,
    }


def _serve(params, root: str, work: Path) -> tuple[subprocess.Popen, str]:
    pfile = work / "serve-params.yaml"
    pfile.write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
    port = free_port()
    log = open(work / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    cmd = [sys.executable, "-m", "shortlist", "serve", "--params", str(pfile), "--root", root]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO
    )
    return proc, f"http://127.0.0.1:{port}"


def swap_phase(params, args, url: str, slots, data_dir: str, model_b: str, users) -> dict:
    """Build bundle B into the idle slot, promote and roll back under load, verify."""
    from shortlist.bundle.bundle import build_bundle, load_bundle
    from shortlist.serving.swapload import swap_under_load, verify_responses

    live = slots.slot_location("live")
    t0 = time.perf_counter()
    build_bundle(params, model_dir=model_b, data_dir=data_dir, dest=slots.slot_location("idle"))
    built = round(time.perf_counter() - t0, 1)

    def make_request(n: int):
        if n % 10 == 9:  # a share of new users: the popularity prior path
            return "POST", "/recommend", {"user_id": f"new-{n}", "k": 20}
        return "POST", "/recommend", {"user_id": users[n % len(users)], "k": 20}

    run = swap_under_load(
        url, slots, make_request, phase_seconds=args.swap_phase_seconds, concurrency=2
    )
    out = {"bundle_b_build_seconds": built, **run.summary()}
    checked, problems = 0, []
    for location in (live, slots.slot_location("idle")):
        bundle = load_bundle(location)
        n, found = verify_responses(bundle, run.bodies(bundle.bundle_id))
        checked, problems = checked + n, problems + found
        del bundle
    out.update(score_checked=checked, mixed=len(problems), mixed_examples=problems[:3])
    out["p99_within_2x"] = bool(out["p99_ratio"] is not None and out["p99_ratio"] <= 2.0)
    return out


def run_size(n_items: int, args, work: Path, model_dir: str) -> dict:
    from pipelines import synth
    from shortlist.bundle.bundle import build_bundle
    from shortlist.bundle.slots import Slots

    work.mkdir(parents=True, exist_ok=True)
    params = _params(work, n_items, args)
    res: dict = {"items": n_items, "embedding_dim": 64}
    t0 = time.perf_counter()
    data_dir = str(work / "data")
    synth.run(
        params,
        users=args.users,
        items=n_items,
        interactions=args.interactions,
        seed=1,
        out_dir=data_dir,
    )
    res["synth_seconds"] = round(time.perf_counter() - t0, 1)
    slots = Slots(params.bundle.root)
    dest = slots.slot_location(slots.idle_slot())
    t0 = time.perf_counter()
    manifest = build_bundle(params, model_dir=model_dir, data_dir=data_dir, dest=dest)
    res["bundle"] = {
        "bundle_id": manifest.bundle_id,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "embed": manifest.stats.get("embed"),
        "index": {k: v for k, v in manifest.stats.get("index", {}).items() if k != "params"},
        "has_ranker": manifest.has_ranker,
    }
    slots.promote()
    rec = _recall(dest, args.recall_queries)
    users = rec.pop("users")
    res["ann"] = rec
    print(f"[{n_items}] bundle built, ANN {rec}", flush=True)

    rng = np.random.default_rng(1)
    order = rng.integers(0, len(users), 1_000_000)

    def make_request(n: int):
        return "POST", "/recommend", {"user_id": users[order[n]], "k": 20}

    proc, url = _serve(params, params.bundle.root, work)
    try:
        t0 = time.perf_counter()
        wait_ready(url, timeout=600)
        res["server_ready_seconds"] = round(time.perf_counter() - t0, 1)
        run_load(url, make_request, max_requests=args.warmup, max_seconds=60, keep_bodies=False)
        load0 = os.getloadavg()[0]
        lat = run_load(
            url,
            make_request,
            max_requests=args.requests,
            max_seconds=args.seconds,
            concurrency=1,
            keep_bodies=False,
        )
        load1 = os.getloadavg()[0]
        thr = run_load(
            url,
            make_request,
            max_requests=args.requests * 2,
            max_seconds=args.seconds,
            concurrency=args.concurrency,
            keep_bodies=False,
        )
        load2 = os.getloadavg()[0]
        check = run_load(url, make_request, max_requests=3, max_seconds=10)
        if args.swap:
            res["swap"] = swap_phase(
                params,
                args,
                url,
                slots,
                data_dir,
                str(Path(model_dir).with_name("model-b")),
                users,
            )
            print(f"[{n_items}] swap {res['swap']}", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    body = check[0].body
    res["response_check"] = {
        "status": check[0].status,
        "items": len(body["items"]),
        "bundle_id_matches": body["bundle_id"] == manifest.bundle_id,
        "strategy": body["strategy"],
    }
    res["latency_concurrency_1"] = {**summarise(lat), "loadavg_1m": [load0, load1]}
    res[f"throughput_concurrency_{args.concurrency}"] = {**summarise(thr), "loadavg_1m": load2}
    print(f"[{n_items}] latency {res['latency_concurrency_1']}", flush=True)
    print(f"[{n_items}] throughput {res[f'throughput_concurrency_{args.concurrency}']}", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--interactions", type=int, default=20_000, help="per catalog")
    ap.add_argument("--train-items", type=int, default=5_000)
    ap.add_argument("--train-interactions", type=int, default=30_000)
    ap.add_argument("--flat-max", type=int, default=200_000)
    ap.add_argument("--nlist", type=int, default=None, help="default: params.yaml")
    ap.add_argument("--nprobe", type=int, default=None, help="default: params.yaml")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--recall-queries", type=int, default=1000)
    ap.add_argument("--ranker", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument(
        "--ranker-order",
        choices=("ranker", "blend"),
        default="ranker",
        help="the order the bundled ranker serves: the network or the item-item blend",
    )
    ap.add_argument("--swap", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--swap-phase-seconds", type=float, default=5.0)
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="params.yaml override, e.g. ranker.ensemble=5 (repeatable)",
    )
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serving_latency.json"))
    args = ap.parse_args(argv)

    argv_ = list(argv if argv is not None else sys.argv[1:])
    if "--work" in argv_:  # a scratch path of this machine: not part of the recipe
        i = argv_.index("--work")
        del argv_[i : i + 2]
    cmd = "benchmarks/serving_latency.py " + " ".join(argv_)
    results = {
        "benchmark": "serving_latency",
        "command": f".venv/bin/python {cmd}".strip(),
        "endpoint": "POST /recommend (k=20, top-200 candidates, ranker when bundled)",
        "data": (
            f"synthetic (shortlist synth): towers trained on {args.train_items} items / "
            f"{args.train_interactions} interactions; each catalog: {args.users} users, "
            f"{args.interactions} interactions"
        ),
        # commit, CPU model and probe (at start), load, versions; one more probe per size
        "provenance": provenance(__file__, argv_),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sizes": [],
    }
    from pipelines import synth

    with tempfile.TemporaryDirectory(prefix="serving-bench-", dir=args.work) as tmp:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        base = Path(tmp)
        params = _params(base, args.train_items, args)
        rp = params.ranker
        results["ranker_config"] = {
            "ensemble": rp.ensemble,
            "cross_layers": rp.cross_layers,
            "cross_rank": rp.cross_rank,
            "hidden_dims": list(rp.hidden_dims),
            "feature_groups": list(rp.feature_groups),
        }
        t0 = time.perf_counter()
        data_dir = str(base / "train-data")
        synth.run(
            params,
            users=args.users,
            items=args.train_items,
            interactions=args.train_interactions,
            seed=0,
            out_dir=data_dir,
        )
        results["train_synth_seconds"] = round(time.perf_counter() - t0, 1)
        model_dir = str(base / "model")
        results["training"] = _train(params, data_dir, model_dir, args.ranker, args.ranker_order)
        if args.swap:  # bundle B's towers: another seed, so its scores differ from A's
            params_b = params.with_overrides({"project.seed": params.project.seed + 1})
            results["training_b"] = _train(
                params_b, data_dir, str(base / "model-b"), args.ranker, args.ranker_order
            )
        print(f"trained: {results['training']}", flush=True)
        for n in sorted(args.sizes):
            results["sizes"].append(run_size(n, args, base / f"n{n}", model_dir))
            results["sizes"][-1]["cpu_probe_seconds_after"] = cpu_probe()
            out.write_text(json.dumps(results, indent=2, default=str))  # after every size
    print(json.dumps(results, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
