"""Readable output of the harness: markdown tables and plots over several models.

`results` everywhere is ``{model_name: evaluate(...) result}``, all measured on the same
split; the first model is the one under evaluation (the challenger), the rest are its
rivals (the live "champion" when there is one, and the baselines). The plots label the
challenger and draw it and the champion bolder than the baselines.
matplotlib is imported lazily (Agg backend) so importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFINITIONS = (
    "Full ranking over the catalog (no sampled negatives), each user's train items excluded. "
    "recall@K = hits / |relevant|; capped_recall@K = hits / min(|relevant|, K); NDCG with "
    "binary relevance; MRR over the full ranking; coverage@K = distinct recommended items / "
    "catalog; pop_pct@K = mean train-popularity percentile of recommended items (100 = most "
    "popular). cold_items ranks among the cold items only."
)


def default_columns(ks: Sequence[int], primary_k: int = 20) -> list[str]:
    """Recall and NDCG at every K, then MRR, coverage and popularity at the primary K."""
    cols = [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks]
    k = primary_k if primary_k in ks else ks[0]
    return cols + ["mrr", f"coverage@{k}", f"popularity_percentile@{k}"]


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key == "users":
        return str(int(value))
    if key.startswith("popularity_percentile"):
        return f"{value:.1f}"
    return f"{value:.4f}"


def _header(key: str) -> str:
    return key.replace("popularity_percentile", "pop_pct")


def markdown_table(
    results: dict[str, dict[str, Any]],
    segment: str = "all",
    columns: Sequence[str] | None = None,
) -> str:
    """One row per model, one column per metric, for one segment."""
    first = next(iter(results.values()))
    cols = list(columns or default_columns(first["ks"]))
    lines = [
        "| model | users | " + " | ".join(_header(c) for c in cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for name, res in results.items():
        seg = res["segments"].get(segment, {})
        cells = [_fmt(c, seg.get(c)) for c in cols]
        lines.append(f"| {name} | {seg.get('users', 0)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def segment_table(results: dict[str, dict[str, Any]], metric: str = "recall@20") -> str:
    """One row per model, one column per segment, for one metric (users in the header)."""
    first = next(iter(results.values()))
    segs = list(first["segments"])
    head = [f"{s} ({first['segments'][s].get('users', 0)})" for s in segs]
    lines = [
        f"| {metric} by segment (users) | " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(segs),
    ]
    for name, res in results.items():
        cells = [_fmt(metric, res["segments"].get(s, {}).get(metric)) for s in segs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(
    results: dict[str, dict[str, Any]], title: str = "Retrieval evaluation", metric: str = ""
) -> str:
    """The whole report: main table, per-segment table, protocol facts and definitions."""
    first = next(iter(results.values()))
    metric = metric or f"recall@{20 if 20 in first['ks'] else first['ks'][0]}"
    facts = (
        f"catalog {first['catalog_size']} items ({first['cold_items']} cold), "
        f"{first['users']} test users, {first['test_interactions']} test interactions "
        f"({first['dropped_test_interactions']} outside the catalog dropped), heavy users: "
        f"more than {first['heavy_user_threshold']:g} train interactions"
    )
    return "\n\n".join(
        [
            f"## {title}",
            facts,
            markdown_table(results),
            segment_table(results, metric),
            DEFINITIONS,
        ]
    )


def off_policy_markdown(section: dict[str, Any]) -> str:
    """The off-policy estimates of the challenger on logged traffic, or why there are none."""
    if not section.get("available"):
        return f"### Off-policy estimates\n\nNone: {section.get('reason', 'no logged traffic')}."
    logged = section["logged_reward"]
    lines = [
        "### Off-policy estimates",
        "",
        f"Challenger as a {section['target']} policy on {section['rows']} shown slots of "
        f"{section['requests']} lists logged by bundle {section['bundle_id']}; reward: "
        f"{section['reward']} per slot. Logged policy's own reward: {logged['value']:.4f} "
        f"[{logged['ci_low']:.4f}, {logged['ci_high']:.4f}]. Share of the challenger's "
        f"lists that the logs observed: {section['target_mass_on_logged']:.1%}.",
        "",
        "| estimator | value | CI | std error | ESS | n | clipped |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in section["estimates"].items():
        lines.append(
            f"| {name} | {_num(e['value'])} | [{_num(e['ci_low'])}, {_num(e['ci_high'])}] | "
            f"{_num(e['std_error'])} | {e['effective_sample_size']:.1f} | {e['n']} | "
            f"{e['clipped']} |"
        )
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "–" if value is None or value != value else f"{value:.4f}"


def recall_curve_rows(
    results: dict[str, dict[str, Any]], segment: str = "all"
) -> list[dict[str, float]]:
    """Wide rows ``{"k": K, model: recall@K, ...}`` (for `dvc plots`)."""
    first = next(iter(results.values()))
    rows = []
    for k in first["ks"]:
        row: dict[str, float] = {"k": k}
        for name, res in results.items():
            value = res["segments"].get(segment, {}).get(f"recall@{k}")
            row[name] = float("nan") if value is None else float(value)
        rows.append(row)
    return rows


def plot_recall_curve(
    results: dict[str, dict[str, Any]], path: str | Path, segment: str = "all"
) -> Path:
    """Recall@K against K, one line per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, res) in enumerate(results.items()):
        ks = res["ks"]
        vals = [res["segments"].get(segment, {}).get(f"recall@{k}", float("nan")) for k in ks]
        lead = i == 0 or name == "champion"
        ax.plot(
            ks,
            vals,
            marker="o",
            label=_label(i, name),
            linewidth=2.5 if lead else 1.0,
            linestyle="-" if lead else "--",
        )
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K")
    ax.set_title(f"Full-ranking recall ({segment})")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_segments(
    results: dict[str, dict[str, Any]], path: str | Path, metric: str = "recall@20"
) -> Path:
    """Grouped bars: `metric` per segment, one bar per model."""
    import numpy as np

    plt = _pyplot()
    first = next(iter(results.values()))
    segs = [s for s in first["segments"] if first["segments"][s].get("users", 0) > 0]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(results), 1)
    x = np.arange(len(segs))
    for i, (name, res) in enumerate(results.items()):
        vals = [res["segments"].get(s, {}).get(metric, 0.0) for s in segs]
        ax.bar(x + i * width, vals, width, label=_label(i, name))
    ax.set_xticks(x + width * (len(results) - 1) / 2, segs, rotation=15)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by segment")
    ax.legend()
    return _save(fig, path)


def _label(position: int, name: str) -> str:
    return f"{name} (challenger)" if position == 0 else name


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
