"""The closed loop: serve, collect, retrain, round after round, through the real parts.

Contract: a policy is the params with its `POLICIES` overrides (and automatic approval)
under its own working directory. `retrain` runs the retrain stages in the DAG's order and
promotes a blessed bundle whose canary passes (`promote="always"`: any whose canary
passes); round 0's bundle goes live whatever its blessing. `serve_round` has every user
ask the real app for `k` items and posts clicks drawn from the truth to `/events/batch`;
`run_policy` then joins and lands the round through `pipelines.feedback` and retrains
every `retrain_every` rounds. `bandit_first_users` is the new-system experiment;
`simulate` runs every policy and writes simulation.json.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shortlist.config import Params
from shortlist.simulate.measures import (
    Tracker,
    gini,
    mean_pairwise_overlap,
    ope_summary,
    summarise,
    true_target_reward,
)
from shortlist.simulate.world import SimSpec, Truth, write_world

# The two loops side by side: the overrides each applies on top of the params.
POLICIES: dict[str, dict[str, Any]] = {
    "no_exploration": {
        "serving.exploration_slots": 0,
        "ranker.propensity_weighting": False,
        "serving.bandit.cold_section": False,
    },
    "exploration_ips": {
        "serving.exploration_slots": 2,
        "ranker.propensity_weighting": True,
        "serving.bandit.cold_section": True,
    },
}


def _policy_params(params: Params, work: Path, policy: dict[str, Any]) -> Params:
    return params.under(work).with_overrides({"promotion.auto_approve": True, **policy})


def retrain(params: Params, work: Path, tag: str, promote: str = "blessed") -> dict[str, Any]:
    """The retrain DAG's stages in order on data.dir; the new bundle goes live when it is
    blessed (or with promote="always", regardless) and its canary passes."""
    from pipelines import bless, build_bundle, canary, rollout, split, train_ranker, validate
    from pipelines import train_towers as towers_stage
    from shortlist.errors import DataValidationError

    t0 = time.perf_counter()
    data_dir = params.data.dir
    report = validate.run(params, data_dir=data_dir)
    if not report.success:
        raise DataValidationError(report.summary().splitlines()[0])
    split_dir = str(work / "runs" / tag / "split")
    model_dir = str(work / "runs" / tag / "model")
    eval_dir = work / "runs" / tag / "eval"
    split.run(params, data_dir=data_dir, out_dir=split_dir)
    towers_stage.run(params, split_dir=split_dir, out_dir=model_dir)
    ranked = train_ranker.run(params, split_dir=split_dir, model_dir=model_dir)
    evaluation = bless.run(
        params,
        model_dir=model_dir,
        split_dir=split_dir,
        root=params.bundle.root,
        out_dir=str(eval_dir),
    )
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    blessed = bool(evaluation["blessing"]["blessed"])
    out: dict[str, Any] = {
        "tag": tag,
        "split_dir": split_dir,
        "model_dir": model_dir,
        "blessed": blessed,
        "blessing_reasons": evaluation["blessing"].get("reasons", []),
        "gate_metric": _primary(params, metrics),
        "off_policy": metrics.get("off_policy") or {},
        "ranker_shipped": bool(ranked.get("shipped")),
        "ranker_ips": ranked.get("propensity_weighting"),
        "promoted": False,
    }
    if blessed or promote == "always":
        build_bundle.run(params, model_dir=model_dir, data_dir=data_dir, root=params.bundle.root)
        can = canary.run(params, root=params.bundle.root, slot="idle")
        if can["passed"]:
            out["bundle_id"] = rollout.promote(params, root=params.bundle.root)["bundle_id"]
            out["promoted"] = True
    out["seconds"] = time.perf_counter() - t0
    return out


def _primary(params: Params, metrics: dict[str, Any]) -> float | None:
    key = params.evaluation.primary_metric
    challenger = metrics.get("challenger") or {}
    flat = challenger.get("all", challenger)
    value = flat.get(key) if isinstance(flat, dict) else None
    return None if value is None else float(value)


def serve_round(
    params: Params, truth: Truth, rng: np.random.Generator, k: int, users: list[str]
) -> dict[str, Any]:
    """Every user asks the real app for k items; clicks drawn from the truth go to
    /events/batch. The app is closed at the end, so its logs are flushed."""
    from fastapi.testclient import TestClient

    from shortlist.serving.app import create_app

    lists, prefs, expected, clicks, bundles = [], [], [], [], set()
    with TestClient(create_app(params, root=params.bundle.root)) as client:
        deadline = time.time() + 60
        while client.get("/ready").status_code != 200:
            if time.time() > deadline:
                raise RuntimeError("the serving app did not become ready in 60 s")
            time.sleep(0.05)
        for user in users:
            body = client.post("/recommend", json={"user_id": user, "k": k}).json()
            items = [it["item_id"] for it in body["items"]]
            bundles.add(body["bundle_id"])
            p = truth.click_probability(user, items)
            hit = rng.random(len(items)) < p
            lists.append(items)
            prefs.append(truth.preference(user, items))
            expected.append(float(p.sum()))
            clicks.append(int(hit.sum()))
            events = [
                {"request_id": body["request_id"], "item_id": i, "kind": "click"}
                for i, h in zip(items, hit, strict=True)
                if h
            ]
            if events:
                got = client.post("/events/batch", json={"events": events})
                if got.status_code != 200:
                    raise RuntimeError(f"/events/batch answered {got.status_code}: {got.text}")
    exposure = np.zeros(truth.pref.shape[1])
    for items in lists:
        np.add.at(exposure, [truth.item(i) for i in items], 1.0)
    return {
        "bundles": sorted(bundles),
        "lists": len(lists),
        "true_utility": float(np.mean(np.concatenate(prefs))) if prefs else 0.0,
        "expected_clicks_per_list": float(np.mean(expected)) if expected else 0.0,
        "clicks_per_list": float(np.mean(clicks)) if clicks else 0.0,
        "overlap": mean_pairwise_overlap(lists),
        "gini": gini(exposure),
        "coverage": float((exposure > 0).mean()),
    }


def run_policy(
    params: Params,
    spec: SimSpec,
    out_dir: Path,
    name: str,
    overrides: dict[str, Any],
    *,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One closed loop under `overrides`: round 0 trains the first bundle, rounds 1..R
    serve, collect and (every `retrain_every`) retrain. Returns the per-round records."""
    from pipelines import feedback

    work = out_dir / name
    params = _policy_params(params, work, overrides)
    truth = Truth(spec, time.time())
    write_world(truth, Path(params.data.dir))
    users = [f"u{u}" for u in range(spec.users)]
    rng = np.random.default_rng(spec.seed + 1)
    records: list[dict[str, Any]] = []
    # The first bundle goes live whatever its blessing (a loop needs something to serve).
    first = retrain(params, work, "round-000", "always")
    window_start = time.time()
    tracker = Tracker(params, name, spec)
    status = "FAILED"
    try:
        for r in range(1, spec.rounds + 1):
            t0 = time.perf_counter()
            served = serve_round(params, truth, rng, spec.k, users)
            window_end = time.time() + 1.0
            joined = feedback.join(params, start=window_start, end=window_end, force=True)
            landed = feedback.land(params)
            window_start = window_end
            record: dict[str, Any] = {
                "policy": name,
                "round": r,
                **served,
                "feedback": {
                    "exposures": joined["exposures"],
                    "engaged": joined["engaged"],
                    "landed": landed.get("landed"),
                    "interactions_added": landed.get("interactions_added"),
                },
                "retrained": False,
            }
            if r % spec.retrain_every == 0:
                trained = retrain(params, work, f"round-{r:03d}", spec.promote)
                truth_value = true_target_reward(params, trained, truth)
                record.update(
                    retrained=True,
                    blessed=trained["blessed"],
                    promoted=trained["promoted"],
                    gate_metric=trained["gate_metric"],
                    ranker_shipped=trained["ranker_shipped"],
                    ranker_ips=trained["ranker_ips"],
                    off_policy=ope_summary(trained, truth_value),
                    retrain_seconds=trained["seconds"],
                )
            record["seconds"] = time.perf_counter() - t0
            records.append(record)
            tracker.log_round(record)
            if on_round is not None:
                on_round(record)
        status = "FINISHED"
    finally:
        tracker.finish(status)
    initial = {k: first[k] for k in ("blessed", "gate_metric", "promoted", "seconds")}
    return {"policy": name, "overrides": overrides, "initial": initial, "rounds": records}


# -- the bandit's first users --------------------------------------------------------------


def bandit_first_users(
    params: Params, spec: SimSpec, out_dir: Path, n_users: int = 1000
) -> dict[str, Any]:
    """A new system (no bundle) serves its first `n_users` requests from the bandit, through
    the real app and /events; popularity-only (the history's counts) and uniformly random
    lists get the same users and click model. Mean clicks per list and true utility each."""
    from fastapi.testclient import TestClient

    from shortlist.serving.app import create_app

    work = out_dir / "bandit"
    params = _policy_params(params, work, {})
    truth = Truth(spec, time.time())
    write_world(truth, Path(params.data.dir))
    inter = pd.read_parquet(Path(params.data.dir) / "interactions.parquet")
    counts = inter["item_id"].astype(str).value_counts()
    popular = counts.index[: spec.k].tolist()
    rng = np.random.default_rng(spec.seed + 2)
    users = [f"u{u}" for u in rng.integers(0, spec.users, n_users)]
    out: dict[str, dict[str, list[float]]] = {
        p: {"clicks": [], "utility": []} for p in ("bandit", "popularity", "random")
    }

    def record(policy: str, user: str, items: list[str]) -> np.ndarray:
        p = truth.click_probability(user, items)
        hit = rng.random(len(items)) < p
        out[policy]["clicks"].append(float(hit.sum()))
        out[policy]["utility"].append(float(truth.preference(user, items).mean()))
        return hit

    all_items = np.array([f"i{j}" for j in range(spec.items)])
    with TestClient(create_app(params, root=params.bundle.root)) as client:
        for user in users:
            body = client.post("/recommend", json={"user_id": user, "k": spec.k}).json()
            if body.get("bundle_id") != "bandit":
                raise RuntimeError(f"expected the bandit to serve, got {body}")
            items = [it["item_id"] for it in body["items"]]
            hit = record("bandit", user, items)
            events = [
                {"request_id": body["request_id"], "item_id": i, "kind": "click"}
                for i, h in zip(items, hit, strict=True)
                if h
            ]
            if events:
                client.post("/events/batch", json={"events": events})
            record("popularity", user, popular)
            record("random", user, rng.choice(all_items, spec.k, replace=False).tolist())
    summary: dict[str, Any] = {"users": n_users, "k": spec.k}
    for policy, got in out.items():
        clicks = np.asarray(got["clicks"])
        summary[policy] = {
            "clicks_per_list": float(clicks.mean()),
            "clicks_per_list_stderr": float(clicks.std(ddof=1) / math.sqrt(len(clicks))),
            "true_utility": float(np.mean(got["utility"])),
            "clicks_per_list_last_200": float(clicks[-200:].mean()),
        }
    return summary


def simulate(
    params: Params,
    spec: SimSpec,
    out_dir: str | Path,
    *,
    policies: dict[str, dict[str, Any]] | None = None,
    bandit_users: int = 0,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every policy's loop (default `POLICIES`) on the same world and seed, then the
    bandit experiment when `bandit_users` > 0; writes simulation.json under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"spec": asdict(spec), "policies": []}
    for name, overrides in (policies or POLICIES).items():
        result["policies"].append(run_policy(params, spec, out, name, overrides, on_round=on_round))
    if bandit_users:
        result["bandit_first_users"] = bandit_first_users(params, spec, out, bandit_users)
    result["summary"] = summarise(result)
    result["seconds"] = time.perf_counter() - t0
    (out / "simulation.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result
