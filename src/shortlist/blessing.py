"""The blessing: may this challenger go live at all?

A challenger is BLESSED only when, on full-ranking metrics of the same split, it beats
every baseline (MostPopular, ItemKNN, EASE, ALS) and the current champion by the
relative margins in params. The first model, with no champion, must beat the baselines.
The verdict carries every reason, so a reviewer sees why, not just whether.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shortlist.config import EvaluationParams


@dataclass
class Blessing:
    blessed: bool
    metric: str
    challenger: float
    reasons: list[str] = field(default_factory=list)
    compared: dict[str, float] = field(default_factory=dict)  # rival -> its score
    thresholds: dict[str, float] = field(default_factory=dict)  # rival -> score to beat

    @property
    def verdict(self) -> str:
        return "BLESSED" if self.blessed else "NOT_BLESSED"

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, **asdict(self)}


def bless(
    challenger: dict[str, float],
    baselines: dict[str, dict[str, float]],
    params: EvaluationParams,
    champion: dict[str, float] | None = None,
) -> Blessing:
    """Compare the challenger's metrics with each baseline's and the champion's.

    `challenger` and each entry of `baselines` map metric names (e.g. "recall@20") to
    values measured by the same harness on the same split; `champion` is the live
    model's metrics on that split (None for the first model).
    """
    metric = params.primary_metric
    if metric not in challenger:
        return Blessing(False, metric, float("nan"), [f"challenger has no {metric} metric"])
    value = float(challenger[metric])
    verdict = Blessing(True, metric, value)
    if not baselines:
        verdict.blessed = False
        verdict.reasons.append("no baseline was evaluated: refusing to bless blind")
    rivals = [
        (f"baseline {name}", m, params.min_relative_gain_over_baselines)
        for name, m in sorted(baselines.items())
    ]
    if champion is not None:
        rivals.append(("champion", champion, params.min_relative_gain_over_champion))
    else:
        verdict.reasons.append("no champion yet: only the baselines must be beaten")
    for label, metrics, gain in rivals:
        if metric not in metrics:
            verdict.blessed = False
            verdict.reasons.append(f"{label} has no {metric}: cannot compare")
            continue
        other = float(metrics[metric])
        needed = other * (1 + gain)
        verdict.compared[label] = other
        verdict.thresholds[label] = needed
        # Both scores and the threshold, so a reader never mistakes one for the other.
        versus = f"{metric} {value:.4f} vs {label} {other:.4f}" + (
            f", threshold {needed:.4f} ({other:.4f} x (1 + {gain:g}))" if gain else ""
        )
        change = f", {(value - other) / other:+.1%}" if other else ""
        if value > needed:
            verdict.reasons.append(f"beats {label}: {versus}{change}")
        else:
            verdict.blessed = False
            verdict.reasons.append(f"does not beat {label}: {versus}{change}")
    return verdict
