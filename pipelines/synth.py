"""Stage `synth`: generate a synthetic dataset directory (path or s3://).

Sizes and seed come from the caller (the CLI flags); every other knob from
params.synth. The tables stream to local Parquet files (for an s3:// target into a
temporary directory, then uploaded), and snapshot.json records the full generator
spec, so a dataset can be regenerated bit for bit.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from shortlist.config import Params
from shortlist.data import schema
from shortlist.data.io import write_snapshot_manifest
from shortlist.data.synth import SynthSpec, write_synth
from shortlist.storage import is_remote, open_store


def run(
    params: Params,
    *,
    users: int | None = None,
    items: int | None = None,
    interactions: int | None = None,
    seed: int | None = None,
    out_dir: str,
) -> dict[str, Any]:
    """Generate into `out_dir`; returns the snapshot manifest (its 'rows' per table)."""
    spec = SynthSpec.from_params(
        params.synth, users=users, items=items, interactions=interactions, seed=seed
    )
    store = open_store(str(out_dir))
    if is_remote(out_dir):
        work = Path(params.project.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=work, prefix="synth-") as tmp:
            checksums, rows = write_synth(spec, tmp)
            for name in schema.TABLES:
                store.upload_file(name, Path(tmp) / name)
    else:
        checksums, rows = write_synth(spec, out_dir)
    extra = {"synth": spec.as_dict()}
    return write_snapshot_manifest(store, checksums, "synth", extra, rows=rows)
