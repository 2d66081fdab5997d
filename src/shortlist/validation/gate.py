"""Run the targets through Great Expectations and read the results back.

One ephemeral GX context per run; each target gets a pandas dataframe asset, a suite,
a validation definition and a checkpoint whose UpdateDataDocsAction renders into our
own Data Docs site (`shortlist_site`) under the given directory. A column of the wrong
type makes some expectations raise inside GX; those come back as failed checks with the
error message, never as a crash of the run. Importing this module imports GX (through
`docs`), so callers on a light path import it inside a function.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from shortlist.validation.docs import SITE_NAME, site_config
from shortlist.validation.report import Check, Failure, jsonable
from shortlist.validation.suites import Target


@dataclass
class GateResult:
    checks: list[Check]
    failures: list[Failure]
    docs_path: str


def _context(docs_dir: Path):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ctx.add_data_docs_site(SITE_NAME, site_config(docs_dir))
    return ctx


def _error(exception_info: Any) -> str | None:
    """The first exception message in a GX result's exception_info (flat or per metric)."""
    if not isinstance(exception_info, dict):
        return None
    if exception_info.get("raised_exception"):
        return str(exception_info.get("exception_message") or "error")
    for value in exception_info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message") or "error")
    return None


def _examples(target: Target, result: dict[str, Any], kwargs: dict[str, Any], n: int) -> list:
    source = target.examples if target.examples is not None else target.frame
    index = result.get("partial_unexpected_index_list") or result.get("unexpected_index_list")
    if index:
        labels = [i for i in index[:n] if i in source.index]
        return source.loc[labels].to_dict("records")
    column = kwargs.get("column")
    if column is not None and column in target.frame.columns:
        # Type and aggregate checks name no rows: show the column's first values instead.
        return [{column: v} for v in target.frame[column].head(n).tolist()]
    return []


MAX_EXAMPLE_CHARS = 200


def _clip(value: Any) -> Any:
    """Example values as the report keeps them: text over MAX_EXAMPLE_CHARS is cut.

    A 10-million-character id must not make the report (and the quarantined
    validation.json) ten megabytes long; its length is what the reader needs."""
    if isinstance(value, str) and len(value) > MAX_EXAMPLE_CHARS:
        return f"{value[:MAX_EXAMPLE_CHARS]}... ({len(value)} characters)"
    if isinstance(value, dict):
        return {k: _clip(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip(v) for v in value]
    return value


def _read_result(target: Target, vr: Any, n: int) -> tuple[list[Check], list[Failure]]:
    checks, failures = [], []
    for r in vr.results:
        cfg = r.expectation_config
        kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
        kwargs = jsonable(kwargs)
        checks.append(Check(target.name, cfg.type, kwargs, bool(r.success)))
        if r.success:
            continue
        result = dict(r.result or {})
        error = _error(r.exception_info)
        failures.append(
            Failure(
                table=target.name,
                expectation=cfg.type,
                kwargs=kwargs,
                unexpected_count=result.get("unexpected_count"),
                element_count=result.get("element_count"),
                observed_value=jsonable(result.get("observed_value")),
                examples=_clip(jsonable([] if error else _examples(target, result, kwargs, n))),
                error=error,
                description=cfg.description,
            )
        )
    return checks, failures


def run_targets(
    targets: list[Target], *, docs_dir: str | Path, run_name: str, example_rows: int
) -> GateResult:
    """Validate every target with a GX Checkpoint and build Data Docs into docs_dir."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.core.run_identifier import RunIdentifier

    docs_dir = Path(docs_dir).resolve()  # GX's filesystem store wants an absolute path
    ctx = _context(docs_dir)
    source = ctx.data_sources.add_pandas("shortlist")
    run_id = RunIdentifier(run_name=run_name)
    result_format = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": max(example_rows, 1),
    }
    checks: list[Check] = []
    failures: list[Failure] = []
    for target in targets:
        asset = source.add_dataframe_asset(target.name)
        batch_def = asset.add_batch_definition_whole_dataframe(f"{target.name}_batch")
        # Expectations go in with the suite: adding them one by one re-saves it each time.
        suite = ctx.suites.add(
            gx.ExpectationSuite(name=target.name, expectations=list(target.expectations))
        )
        definition = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=target.name, data=batch_def, suite=suite)
        )
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"{target.name}_checkpoint",
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="data_docs", site_names=[SITE_NAME])],
                result_format=result_format,
            )
        )
        frame = target.frame if isinstance(target.frame, pd.DataFrame) else pd.DataFrame()
        outcome = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
        for vr in outcome.run_results.values():
            c, f = _read_result(target, vr, example_rows)
            checks += c
            failures += f
    return GateResult(checks=checks, failures=failures, docs_path=str(docs_dir / "index.html"))
