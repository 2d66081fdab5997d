"""Off-policy estimates of a target policy's reward from logged (propensity, reward) data.

Each logged decision i has the reward r_i it earned, the probability p_i with which the
logging policy took its action (the propensity the impressions log records), and the
probability t_i with which the target policy would take the same action. With importance
weights w_i = t_i / p_i:

- IPS (inverse propensity scoring): mean(w_i r_i). Unbiased when every action the target
  takes has p > 0; its variance grows with the weights.
- SNIPS (self-normalised IPS): sum(w_i r_i) / sum(w_i). Slightly biased, far lower
  variance, and always within the range of the rewards.
- DR (doubly robust): mean(v_i + w_i (r_i - q_i)), where q_i is a reward model's
  prediction for the logged action and v_i its expected reward under the target policy
  (sum over actions of t(a) q(a)). Unbiased if either the propensities or the reward
  model are right; lower variance than IPS when the model is good.

Every estimate carries a normal-approximation confidence interval (the central limit
theorem over decisions; SNIPS through the delta method) and the effective sample size
(sum w)^2 / sum w^2 (Kish): when it is small next to n, a few heavily weighted decisions
carry the estimate and the interval is not to be trusted. `clip` caps the weights
(lower variance, bias towards the logging policy); how many were capped is reported.

For a list whose positions are logged one row each (item, position, propensity), each row
is one decision: the estimate is the mean reward per shown slot, under the usual
assumption that the reward of a slot depends on its own item and position only.
`estimate_lists` does this for whole logged lists against a target list policy, with a
cross-fitted per-item reward model for DR.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

ESTIMATORS = ("ips", "snips", "dr")


@dataclass(frozen=True)
class Estimate:
    """One estimator's value with its interval, over `n` logged decisions."""

    estimator: str
    value: float
    std_error: float
    ci_low: float
    ci_high: float
    confidence: float
    n: int
    effective_sample_size: float
    clipped: int  # weights capped at `clip`

    def covers(self, truth: float) -> bool:
        return self.ci_low <= truth <= self.ci_high

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _inputs(
    reward: Any, propensity: Any, target: Any, clip: float | None
) -> tuple[np.ndarray, np.ndarray, int]:
    r = np.asarray(reward, dtype=np.float64).ravel()
    p = np.asarray(propensity, dtype=np.float64).ravel()
    t = np.asarray(target, dtype=np.float64).ravel()
    if not (len(r) == len(p) == len(t)):
        raise ValueError(
            f"reward, propensity and target differ in length ({len(r)}, {len(p)}, {len(t)})"
        )
    if len(r) == 0:
        raise ValueError("no logged decisions to estimate from")
    for name, a in (("reward", r), ("propensity", p), ("target", t)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    if (p <= 0).any() or (p > 1).any():
        raise ValueError("propensities must lie in (0, 1]: a logged action had probability > 0")
    if (t < 0).any() or (t > 1).any():
        raise ValueError("target probabilities must lie in [0, 1]")
    w = t / p
    clipped = 0
    if clip is not None:
        if clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}")
        clipped = int((w > clip).sum())
        w = np.minimum(w, clip)
    return r, w, clipped


def _ess(w: np.ndarray) -> float:
    s2 = float((w * w).sum())
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _mean_estimate(
    name: str, terms: np.ndarray, w: np.ndarray, confidence: float, clipped: int
) -> Estimate:
    n = len(terms)
    value = float(terms.mean())
    se = float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    z = _z(confidence)
    return Estimate(
        name, value, se, value - z * se, value + z * se, confidence, n, _ess(w), clipped
    )


def ips(
    reward: Any,
    propensity: Any,
    target: Any,
    *,
    confidence: float = 0.95,
    clip: float | None = None,
) -> Estimate:
    """Inverse propensity scoring: mean of (target / propensity) * reward."""
    r, w, clipped = _inputs(reward, propensity, target, clip)
    return _mean_estimate("ips", w * r, w, confidence, clipped)


def snips(
    reward: Any,
    propensity: Any,
    target: Any,
    *,
    confidence: float = 0.95,
    clip: float | None = None,
) -> Estimate:
    """Self-normalised IPS: sum(w r) / sum(w); its interval from the delta method."""
    r, w, clipped = _inputs(reward, propensity, target, clip)
    n = len(r)
    total = float(w.sum())
    z = _z(confidence)
    if total <= 0:  # the target never takes a logged action: nothing to say
        nan = float("nan")
        return Estimate("snips", nan, nan, nan, nan, confidence, n, 0.0, clipped)
    value = float((w * r).sum()) / total
    # Var(sum w r / sum w) ~ sum(w^2 (r - V)^2) / (sum w)^2, with the small-sample factor
    # n / (n - 1) so that uniform weights give the sample mean's usual standard error.
    resid = w * (r - value)
    se = float(np.sqrt((resid**2).sum() * n / max(n - 1, 1)) / total) if n > 1 else float("inf")
    return Estimate(
        "snips", value, se, value - z * se, value + z * se, confidence, n, _ess(w), clipped
    )


def doubly_robust(
    reward: Any,
    propensity: Any,
    target: Any,
    q_logged: Any,
    v_target: Any,
    *,
    confidence: float = 0.95,
    clip: float | None = None,
) -> Estimate:
    """Doubly robust: mean(v + w (r - q)). `q_logged`: the reward model's prediction for
    each logged action; `v_target`: its expected reward under the target policy for the
    same context (sum over actions of target probability times prediction)."""
    r, w, clipped = _inputs(reward, propensity, target, clip)
    q = np.asarray(q_logged, dtype=np.float64).ravel()
    v = np.asarray(v_target, dtype=np.float64).ravel()
    if len(q) != len(r) or len(v) != len(r):
        raise ValueError("q_logged and v_target need one value per logged decision")
    if not (np.isfinite(q).all() and np.isfinite(v).all()):
        raise ValueError("q_logged or v_target holds NaN or infinite values")
    return _mean_estimate("dr", v + w * (r - q), w, confidence, clipped)


def estimate_all(
    reward: Any,
    propensity: Any,
    target: Any,
    *,
    q_logged: Any = None,
    v_target: Any = None,
    confidence: float = 0.95,
    clip: float | None = None,
) -> dict[str, Estimate]:
    """IPS and SNIPS, and DR when a reward model's `q_logged` and `v_target` are given."""
    out = {
        "ips": ips(reward, propensity, target, confidence=confidence, clip=clip),
        "snips": snips(reward, propensity, target, confidence=confidence, clip=clip),
    }
    if q_logged is not None and v_target is not None:
        out["dr"] = doubly_robust(
            reward, propensity, target, q_logged, v_target, confidence=confidence, clip=clip
        )
    return out


def item_reward_model(
    items: Any, reward: Any, folds: Any, *, prior_strength: float = 10.0
) -> tuple[list[dict[str, float]], list[float]]:
    """Per fold f, a reward model fitted on the other folds' rows: each item's mean
    reward shrunk towards the overall mean (`prior_strength` pseudo-rows of it).

    Returns (per fold: item -> predicted reward, per fold: the overall mean for items it
    never saw). Cross-fitting keeps a row's own reward out of its prediction, so DR's
    correction term is not fitted to the noise it corrects."""
    frame = pd.DataFrame(
        {"item": np.asarray(items), "r": np.asarray(reward, float), "f": np.asarray(folds)}
    )
    models, means = [], []
    for f in range(int(frame["f"].max()) + 1 if len(frame) else 0):
        train = frame[frame["f"] != f]
        if not len(train):
            train = frame
        mean = float(train["r"].mean())
        agg = train.groupby("item")["r"].agg(["sum", "count"])
        q = (agg["sum"] + prior_strength * mean) / (agg["count"] + prior_strength)
        models.append(q.to_dict())
        means.append(mean)
    return models, means


def estimate_lists(
    logged: pd.DataFrame,
    target: Any,
    target_lists: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    confidence: float = 0.95,
    clip: float | None = None,
    prior_strength: float = 10.0,
    folds: int = 2,
) -> dict[str, Any]:
    """IPS, SNIPS and DR of a target list policy on logged lists, per shown slot.

    `logged`: one row per shown item with request_id, item_id, propensity (the logging
    policy's probability of showing it), reward and list_length (the slots of its list).
    `target`: per row, the target policy's probability of showing that item in that
    request's list. `target_lists`: per request, the items the target may show and their
    probabilities (DR's expected model reward under the target). The value estimated is
    the target's mean reward per slot, under the assumption that an item's reward does
    not depend on its position; `logged_reward` is the logging policy's own mean reward
    per slot, the figure to compare with."""
    req = logged["request_id"].astype(str).to_numpy()
    items = logged["item_id"].astype(str).to_numpy()
    r = logged["reward"].to_numpy(dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    k = logged["list_length"].to_numpy(dtype=np.float64)
    codes, uniques = pd.factorize(req)
    # A request's fold from its rank among the sorted ids: the same on every run.
    fold_of_request = np.argsort(np.argsort(uniques)) % folds
    fold = fold_of_request[codes]
    models, means = item_reward_model(items, r, fold, prior_strength=prior_strength)
    q = np.array([models[f].get(i, means[f]) for i, f in zip(items, fold, strict=True)])
    v_request = np.zeros(len(uniques))
    for j, rid in enumerate(uniques):
        cand, probs = target_lists.get(rid, (np.zeros(0, object), np.zeros(0)))
        f = fold_of_request[j]
        qa = np.array([models[f].get(str(a), means[f]) for a in cand], dtype=np.float64)
        v_request[j] = float(np.asarray(probs, np.float64) @ qa) if len(qa) else 0.0
    v = v_request[codes] / k
    out = estimate_all(
        r, logged["propensity"], t, q_logged=q, v_target=v, confidence=confidence, clip=clip
    )
    n = len(r)
    se = float(r.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    z = _z(confidence)
    mass = pd.Series(t).groupby(codes).sum().to_numpy() / k[np.unique(codes, return_index=True)[1]]
    return {
        "rows": n,
        "requests": len(uniques),
        "logged_reward": {
            "value": float(r.mean()),
            "std_error": se,
            "ci_low": float(r.mean()) - z * se,
            "ci_high": float(r.mean()) + z * se,
        },
        "target_mass_on_logged": float(mass.mean()),
        "estimates": {name: e.to_dict() for name, e in out.items()},
    }
