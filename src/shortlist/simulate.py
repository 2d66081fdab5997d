"""`shortlist simulate`: the feedback loop run against a known ground truth, and measured.

A deployed recommender trains on what it chose to show, so left alone its loop can
homogenise what users see and lose utility (Chaney, Stewart and Engelhardt 2018). This
module runs that loop with simulated users whose preferences are known, through the
platform's real parts, and records what the loop does round by round:

- The world is the synthetic generator's (`shortlist.data.synth`): its latent item
  factors and user tastes are the ground truth. A user's true preference for an item is
  sigmoid(taste . item - `pref_offset`) (taste at the end of the generated period); a
  shown item at position j is engaged (a click) with probability preference x
  1 / log2(j + 2) (position bias), drawn with the simulation's seed.
- Round 0 trains the first bundle from the generated history with the retrain stages in
  the DAG's order (it goes live whatever its blessing, which is recorded) (validate, split, train towers, train ranker, evaluate and bless, build
  the bundle into the idle slot, canary, promote). Each round after it: every user asks
  the real serving app (`shortlist.serving.app`, its ASGI app through an HTTP client) for
  `k` items, clicks are posted to the real `/events/batch`, the app is closed (its logs
  flushed), the round's window is joined and landed through the data contract
  (`pipelines.feedback`), and every `retrain_every` rounds the retrain stages run again
  on the grown dataset. A bundle goes live when it is blessed and passes its canary
  (`promote="always"`: whenever its canary passes, the blessing recorded beside it).
- Per round: the true utility (mean true preference of the shown items), the realised
  and expected clicks per list, homogenisation (mean pairwise Jaccard overlap of the
  users' lists, Gini of item exposure over the catalog, catalog coverage), and on a
  retrain round the gate's offline metric (the challenger's `evaluation.primary_metric`
  on the held-out part) and the evaluate stage's off-policy estimate of the challenger
  (SNIPS and DR, with their intervals) beside the challenger's true reward on the same
  logged requests, computed from the ground truth: the mean over those requests of
  preference x position bias of the challenger's greedy list (its deterministic
  target), so `covered` says whether the interval holds the truth.

`bandit_first_users` measures the bandit a new system serves (no bundle yet) over its
first users against popularity-only lists (the generated history's counts) and uniformly
random lists, on the same users with the same click model.

Everything is written under `out_dir`; the per-round records are returned and logged to
MLflow (`params.mlflow`). Policies differ only through params overrides
(`POLICIES`: no exploration; exploration with propensity-aware training and the bandit's
cold section).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shortlist.config import Params

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class SimSpec:
    """The simulated world and loop (sizes small enough for one core in minutes)."""

    users: int = 300
    items: int = 400
    interactions: int = 6000
    topics: int = 8
    period_days: int = 60
    rounds: int = 10
    retrain_every: int = 1
    k: int = 10
    seed: int = 0
    pref_offset: float = 3.0  # preference = sigmoid(taste . item - pref_offset)
    promote: str = "blessed"  # "blessed" (as the DAG) or "always" (canary only)


# -- the ground truth ---------------------------------------------------------------------


class Truth:
    """True preferences of the synthetic world's users for its items, and the click model."""

    def __init__(self, spec: SimSpec, now: float) -> None:
        from shortlist.data.synth import SynthSpec, make_world

        self.synth = SynthSpec(
            users=spec.users,
            items=spec.items,
            interactions=spec.interactions,
            seed=spec.seed,
            topics=spec.topics,
            period_days=spec.period_days,
            start_timestamp=int(now) - spec.period_days * 86_400,
            threads=1,
        )
        self.world = make_world(self.synth)
        users = np.arange(spec.users)
        end = np.full(spec.users, self.synth.end_timestamp, dtype=np.int64)
        taste = self.world.taste(users, end, self.synth)
        affinity = taste.astype(np.float64) @ self.world.item_factors.T.astype(np.float64)
        self.pref = 1.0 / (1.0 + np.exp(-(affinity - spec.pref_offset)))  # (U, M)

    @staticmethod
    def user(user_id: str) -> int:
        return int(str(user_id)[1:])

    @staticmethod
    def item(item_id: str) -> int:
        return int(str(item_id)[1:])

    def preference(self, user_id: str, item_ids: list[str]) -> np.ndarray:
        return self.pref[self.user(user_id), [self.item(i) for i in item_ids]]

    def click_probability(self, user_id: str, item_ids: list[str]) -> np.ndarray:
        return self.preference(user_id, item_ids) * position_bias(len(item_ids))


def position_bias(n: int) -> np.ndarray:
    """Examination probability of positions 0..n-1: 1 / log2(position + 2)."""
    return 1.0 / np.log2(np.arange(n) + 2.0)


# -- homogenisation ------------------------------------------------------------------------


def mean_pairwise_overlap(lists: list[list[str]]) -> float:
    """Mean Jaccard overlap |A & B| / |A | B| over every pair of lists."""
    if len(lists) < 2:
        return 0.0
    vocab = {i: j for j, i in enumerate(sorted({i for lst in lists for i in lst}))}
    x = np.zeros((len(lists), len(vocab)))
    for r, lst in enumerate(lists):
        x[r, [vocab[i] for i in set(lst)]] = 1.0
    inter = x @ x.T
    size = x.sum(axis=1)
    union = size[:, None] + size[None, :] - inter
    iu = np.triu_indices(len(lists), k=1)
    return float(np.mean(inter[iu] / np.maximum(union[iu], 1.0)))


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0: all equal; near 1: one holds all)."""
    c = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(c), c.sum()
    if n == 0 or total == 0:
        return 0.0
    return float((2.0 * np.sum(np.arange(1, n + 1) * c) / (n * total)) - (n + 1) / n)


# -- the loop -------------------------------------------------------------------------------


def _policy_params(params: Params, work: Path, policy: dict[str, Any]) -> Params:
    return params.under(work).with_overrides({"promotion.auto_approve": True, **policy})


def write_world(truth: Truth, data_dir: Path) -> dict[str, Any]:
    """The generated history as a dataset directory (the data contract's tables)."""
    from shortlist.data.io import write_snapshot_manifest
    from shortlist.data.synth import write_synth
    from shortlist.storage import open_store

    checksums, rows = write_synth(truth.synth, data_dir, progress=False)
    store = open_store(str(data_dir))
    return write_snapshot_manifest(
        store, checksums, "synth", {"synth": truth.synth.as_dict()}, rows=rows
    )


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


def true_target_reward(params: Params, trained: dict[str, Any], truth: Truth) -> float | None:
    """The challenger's true reward per shown slot on the logged requests the evaluate
    stage estimated it on: its greedy list for each (as `evaluation.off_policy.target`
    deterministic), preference x position bias from the ground truth, as the stage
    masks and scores them."""
    from pipelines.evaluate import POLICIES_WITH_MARGINALS, load_model, read_logged
    from shortlist.data import schema
    from shortlist.data.split_io import load_split

    op = trained["off_policy"]
    if not op.get("available"):
        return None
    logged, _, _ = read_logged(params, bundle_id=op.get("bundle_id"))
    if logged is None:
        return None
    length = logged.groupby("request_id")["position"].max() + 1
    rows = logged[
        logged["user_id"].notna()
        & logged["policy"].isin(POLICIES_WITH_MARGINALS)
        & (logged["propensity"] > 0)
    ]
    split = load_split(trained["split_dir"])
    seen = (
        pd.concat([split.train, split.validation], ignore_index=True)
        if len(split.test)
        else split.train
    )
    model = load_model(trained["model_dir"], params, split, seen)
    catalog = np.asarray(model.item_ids).astype(str)
    col = pd.Series(np.arange(len(catalog)), index=catalog)
    cols = col.reindex(seen[schema.ITEM_ID].astype(str)).to_numpy()
    ok = ~np.isnan(cols)
    before = seen.assign(_col=cols)[ok]
    by_user = {u: g for u, g in before.groupby(before[schema.USER_ID].astype(str))}
    rewards = []
    for user, reqs in rows.groupby(rows["user_id"].astype(str)):
        scores = np.asarray(model.score([user]))[0].astype(np.float64)
        history = by_user.get(user)
        for rid, req in reqs.groupby("request_id"):
            s = scores.copy()
            if history is not None:
                earlier = history[history[schema.TIMESTAMP] < req[schema.TIMESTAMP].min()]
                s[earlier["_col"].to_numpy(dtype=np.int64)] = -np.inf
            n = int(length[rid])
            top = np.argsort(-s, kind="stable")[:n]
            top = top[np.isfinite(s[top])]
            items = catalog[top].tolist()
            reward = truth.preference(user, items) * position_bias(len(items))
            rewards.append(float(reward.mean()) if len(items) else 0.0)
    return float(np.mean(rewards)) if rewards else None


def _ope(trained: dict[str, Any], truth_value: float | None) -> dict[str, Any]:
    op = trained["off_policy"]
    if not op.get("available"):
        return {"available": False, "reason": op.get("reason")}
    out: dict[str, Any] = {"available": True, "truth": truth_value}
    out["logged_reward"] = (op.get("logged_reward") or {}).get("value")
    for name in ("snips", "dr", "ips"):
        est = (op.get("estimates") or {}).get(name)
        if not est:
            continue
        lo, hi = est.get("ci_low"), est.get("ci_high")
        out[name] = {
            "value": est.get("value"),
            "ci": [lo, hi],
            "ess": est.get("effective_sample_size"),
            "covered": None
            if truth_value is None or lo is None or hi is None
            else bool(lo <= truth_value <= hi),
        }
    return out


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
    tracker = _Tracker(params, name, spec)
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
                    off_policy=_ope(trained, truth_value),
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


class _Tracker:
    """The simulation's MLflow run, written through the client by run id: the stages open
    their own runs while it lasts, and MLflow allows one active run per process."""

    def __init__(self, params: Params, name: str, spec: SimSpec) -> None:
        from shortlist.tracking import configure

        mlflow = configure(params)
        self.client = mlflow.MlflowClient()
        experiment = mlflow.get_experiment_by_name(params.mlflow.experiment)
        run = self.client.create_run(
            experiment.experiment_id,
            run_name=f"simulate-{name}",
            tags={"shortlist.stage": "simulate", "sim.policy": name},
        )
        self.run_id = run.info.run_id
        for k, v in asdict(spec).items():
            self.client.log_param(self.run_id, f"sim.{k}", v)

    def log_round(self, record: dict[str, Any]) -> None:
        keys = ("true_utility", "expected_clicks_per_list", "clicks_per_list", "overlap")
        values = {k: float(record[k]) for k in (*keys, "gini", "coverage")}
        if record.get("gate_metric") is not None:
            values["gate_metric"] = float(record["gate_metric"])
        ope = record.get("off_policy") or {}
        if ope.get("available") and ope.get("truth") is not None:
            values["ope_truth"] = float(ope["truth"])
            for name in ("snips", "dr"):
                if name in ope and ope[name]["value"] is not None:
                    values[f"ope_{name}"] = float(ope[name]["value"])
        for key, value in values.items():
            self.client.log_metric(self.run_id, key, value, step=int(record["round"]))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


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


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Per policy: first and last round's measures, OPE coverage counts, the means."""
    out: dict[str, Any] = {}
    for policy in result["policies"]:
        rounds = policy["rounds"]
        ope = [r["off_policy"] for r in rounds if r.get("off_policy", {}).get("available")]
        row: dict[str, Any] = {
            "rounds": len(rounds),
            "retrains": sum(bool(r.get("retrained")) for r in rounds),
            "promotions": sum(bool(r.get("promoted")) for r in rounds),
        }
        for key in ("true_utility", "expected_clicks_per_list", "overlap", "gini", "coverage"):
            values = [float(r[key]) for r in rounds]
            row[key] = {"first": values[0], "last": values[-1], "mean": float(np.mean(values))}
        for name in ("snips", "dr"):
            judged = [
                o[name]["covered"] for o in ope if name in o and o[name]["covered"] is not None
            ]
            row[f"ope_{name}_covered"] = f"{sum(judged)}/{len(judged)}"
        out[policy["policy"]] = row
    return out


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


def round_line(record: dict[str, Any]) -> str:
    """One human line per round."""
    line = (
        f"{record['policy']} round {record['round']}: utility {record['true_utility']:.4f}, "
        f"clicks/list {record['clicks_per_list']:.3f}, overlap {record['overlap']:.3f}, "
        f"gini {record['gini']:.3f}, coverage {record['coverage']:.3f}"
    )
    if record.get("retrained"):
        ope = record["off_policy"]
        line += f"; gate {record['gate_metric']}, promoted {record['promoted']}"
        if ope.get("available") and "snips" in ope:
            s = ope["snips"]
            line += (
                f"; SNIPS {s['value']:.4f} [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}] "
                f"vs true {ope['truth']:.4f}"
            )
    return line
