"""What the simulation measures, and where it records it.

Contract: pure functions of what the loop produced, plus the MLflow recorder.

- Homogenisation of the served lists: `mean_pairwise_overlap` (mean Jaccard overlap of
  the users' lists) and `gini` (of item exposure over the catalog).
- Off-policy evaluation against the truth: `true_target_reward` is the challenger's true
  reward on the logged requests the evaluate stage estimated it on (the mean over those
  requests of preference x position bias of the challenger's greedy list, its
  deterministic target); `ope_summary` puts the stage's SNIPS/DR/IPS estimates beside it,
  with `covered` saying whether each interval holds the truth.
- `Tracker` logs each round's measures to the simulation's MLflow run; `summarise` and
  `round_line` condense the records for the result file and for people.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from shortlist.config import Params
from shortlist.simulate.world import SimSpec, Truth, position_bias

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


# -- off-policy evaluation against the truth -----------------------------------------------


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


def ope_summary(trained: dict[str, Any], truth_value: float | None) -> dict[str, Any]:
    """The evaluate stage's off-policy estimates of the challenger beside its true reward."""
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


# -- recording and reporting ---------------------------------------------------------------


class Tracker:
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
