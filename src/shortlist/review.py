"""The review page: what a person reads on a model version in the MLflow UI to decide.

A version's description puts challenger and champion side by side on every key metric
(both values, the difference, the threshold the blessing applied, the best baseline),
the blessing's reasons, the canary, the plots (champion vs challenger vs baselines) and
a direct link to the comparison artifacts. Links are relative to the MLflow UI that
shows them (`#/...` routes, `get-artifact?...`), so they work behind any host name.
After promotion the status line says who approved and when, and `challenger` is
removed from the promoted version (`record_promotion`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from shortlist.config import Params

STATUS_PREFIX = "**Status:**"
AWAITING = (
    f"{STATUS_PREFIX} `challenger`, awaits approval. To approve, click the pencil beside "
    "*Aliases* above, add `champion`, Save: the retrain DAG promotes it within "
    "`promotion.poll_seconds`."
)
NOT_PROMOTABLE = f"{STATUS_PREFIX} not promotable (not blessed or canary failed)."
PLOTS = {
    "recall@K, champion vs challenger vs baselines": "comparison/plots/recall_at_k.png",
    "recall by segment": "comparison/plots/segments.png",
}
COMPARISON_METRICS = "metrics.json"


def version_url(params: Params, version: str) -> str:
    """The version page in the MLflow UI (absolute when tracking goes to a server)."""
    from shortlist.tracking import tracking_uri

    uri = tracking_uri(params)
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ""
    name = quote(params.promotion.registered_model, safe="")
    return f"{base}/#/models/{name}/versions/{version}"


def load_comparison(comparison_dir: str | None) -> dict[str, Any]:
    """The evaluate stage's metrics.json ({'champion', 'baselines', ...}), or {}."""
    if not comparison_dir:
        return {}
    path = Path(comparison_dir) / COMPARISON_METRICS
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def metric_order(metrics: dict[str, float], primary: str) -> list[str]:
    """The primary metric first, then recall, NDCG, hit rate by K, then the rest."""

    def key(name: str) -> tuple:
        family, _, k = name.partition("@")
        rank = {"recall": 0, "capped_recall": 1, "ndcg": 2, "hit_rate": 3}.get(family, 9)
        return (name != primary, rank, family, int(k) if k.isdigit() else 0)

    return sorted(metrics, key=key)


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _diff(new: float | None, old: float | None) -> str:
    if new is None or old is None:
        return "–"
    text = f"{new - old:+.4f}"
    if old:
        text += f" ({(new - old) / abs(old):+.1%})"
    return text


def comparison_table(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    baselines: dict[str, dict[str, float]],
    primary: str,
    champion_gain: float,
    champion_label: str = "champion",
    champion_recorded: dict[str, float] | None = None,
) -> str:
    """Markdown: one row per metric; challenger, champion (same split), difference, the
    blessing threshold on the primary metric, the best baseline; and, when given, the
    champion's metrics as recorded at its own registration (on its own split)."""
    head = ["metric", "challenger", champion_label, "difference", "threshold", "best baseline"]
    if champion_recorded:
        head.append(f"{champion_label} at its registration")
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name in metric_order(challenger, primary):
        new = _num(challenger.get(name))
        old = _num((champion or {}).get(name))
        rivals = [(_num(m.get(name)), b) for b, m in baselines.items() if _num(m.get(name))]
        best = max(rivals, default=None)
        threshold = "–"
        if name == primary and old is not None:
            threshold = f"> {old * (1 + champion_gain):.4f}"
        cells = [
            f"**{name}** (gate)" if name == primary else name,
            _fmt(new),
            _fmt(old),
            _diff(new, old),
            threshold,
            f"{best[0]:.4f} {best[1]}" if best else "–",
        ]
        if champion_recorded:
            cells.append(_fmt(_num(champion_recorded.get(name))))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def artifact_links(run_id: str | None, experiment_id: str | None) -> list[str]:
    """Markdown lines: the plots inline and a link to the `comparison/` artifacts."""
    if not run_id:
        return []
    lines = []
    for title, path in PLOTS.items():
        lines.append(f"![{title}](get-artifact?path={quote(path, safe='')}&run_uuid={run_id})")
    if experiment_id:
        where = f"#/experiments/{experiment_id}/runs/{run_id}/artifactPath/comparison"
        lines.append(
            f"[Open the comparison artifacts]({where}) (report.md: every model and segment; "
            "metrics.json; plots)"
        )
    return lines


def describe(
    *,
    bundle_id: str,
    blessing: dict[str, Any],
    canary: dict[str, Any],
    metrics: dict[str, float],
    comparison: dict[str, Any],
    champion_gain: float,
    champion_version: str | None = None,
    champion_recorded: dict[str, float] | None = None,
    run_id: str | None = None,
    experiment_id: str | None = None,
) -> str:
    """The markdown a reviewer reads on the version page in the MLflow UI."""
    primary = blessing.get("metric") or "recall@20"
    champion = comparison.get("champion")
    promotable = bool(blessing.get("blessed")) and bool(canary.get("passed"))
    label = f"champion (v{champion_version})" if champion_version else "champion"
    canary_text = "passed" if canary.get("passed") else "FAILED"
    lines = [
        f"### Bundle `{bundle_id}`: {blessing.get('verdict', '?')} on `{primary}`, "
        f"canary {canary_text}",
        "",
        AWAITING if promotable else NOT_PROMOTABLE,
        "",
    ]
    if champion:
        lines.append(
            f"Challenger and {label} were evaluated by the same harness on the same split "
            f"(this run's {comparison.get('eval_part', 'test')} part)."
        )
    else:
        lines.append("No champion yet: the challenger only had to beat the baselines.")
    lines += [
        "",
        comparison_table(
            metrics,
            champion,
            comparison.get("baselines") or {},
            primary,
            champion_gain,
            label,
            champion_recorded,
        ),
        "",
        "**Blessing:**",
        "",
        *[f"- {r}" for r in blessing.get("reasons", [])],
        "",
        *(
            [f"**Ranker:** {blessing['ranker'].get('reason', '')}", ""]
            if blessing.get("ranker")
            else []
        ),
        f"**Canary:** {canary_text}"
        + (": " + "; ".join(canary.get("reasons", [])) if canary.get("reasons") else ""),
        "",
        *artifact_links(run_id, experiment_id),
    ]
    return "\n".join(lines).rstrip() + "\n"


def approved_status(approved_by: str, when: float) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
    return f"{STATUS_PREFIX} `champion`, live: approved by {approved_by}, promoted {stamp}."


def with_status(description: str, status: str) -> str:
    """The description with its status line replaced (or put first when it has none)."""
    lines = (description or "").splitlines()
    for i, line in enumerate(lines):
        if line.startswith(STATUS_PREFIX):
            lines[i] = status
            return "\n".join(lines) + "\n"
    return "\n".join([status, "", *lines]) + "\n"


def record_promotion(params: Params, version: str, when: float | None = None) -> None:
    """After the pointer flipped to `version`: remove `challenger` from it and record in
    its description who approved it and when (the `approved_by` tag stays the record)."""
    from shortlist import registry

    mlflow = registry.configure(params)
    client = mlflow.MlflowClient()
    name = params.promotion.registered_model
    challenger = registry.alias_version(params, registry.CHALLENGER)
    if challenger is not None and str(challenger.version) == str(version):
        client.delete_registered_model_alias(name, registry.CHALLENGER)
    mv = client.get_model_version(name, str(version))
    approved_by = (mv.tags or {}).get(registry.TAG_APPROVED_BY) or "unknown"
    status = approved_status(approved_by, time.time() if when is None else when)
    client.update_model_version(name, str(version), description=with_status(mv.description, status))
    retired = f"{STATUS_PREFIX} retired: version {version} replaced it as `champion`."
    for other in client.search_model_versions(f"name='{name}'"):
        if str(other.version) != str(version) and "`champion`, live" in (other.description or ""):
            client.update_model_version(
                name, str(other.version), description=with_status(other.description, retired)
            )
