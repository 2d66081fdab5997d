"""The bundle manifest: what a bundle holds and the checksums that prove it.

`manifest.json` is written LAST into a slot, so a slot without one is a half-built
bundle and is refused. It records the model fingerprint the item embeddings were made
with, the embedding contract (dim, dtype, normalisation, metric), the item count, the
data snapshot, the index type and parameters, the MLflow lineage, and the sha256 of
every file; `verify_files` re-hashes them all before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from shortlist.errors import BundleError

MANIFEST = "manifest.json"
CANARY = "canary.json"
FORMAT = 1


@dataclass
class Manifest:
    bundle_id: str
    model_fingerprint: str
    # Width of the indexed item vectors: the item-tower embedding (L2-normalised: see
    # `normalised`), plus one column when `popularity_column` (the inference popularity
    # term; queries carry a 1 there).
    embedding_dim: int
    item_count: int
    files: dict[str, str]  # relative path -> sha256
    index_type: str
    index_params: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    normalised: bool = True
    metric: str = "ip"
    user_count: int = 0
    data_snapshot_id: str = ""
    created_at: str = ""
    mlflow: dict[str, Any] = field(default_factory=dict)  # run ids / registered version
    has_ranker: bool = False
    popularity_column: bool = False
    sizes: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # embed items/s, build seconds...
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Manifest:
        known = {f.name for f in fields(cls)}
        required = {"bundle_id", "model_fingerprint", "embedding_dim", "item_count", "files"}
        missing = required - set(doc)
        if missing:
            raise BundleError(f"manifest is missing {sorted(missing)}")
        if doc.get("format", FORMAT) != FORMAT:
            raise BundleError(f"manifest format {doc.get('format')} is not {FORMAT}")
        return cls(**{k: v for k, v in doc.items() if k in known})


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def checksum_dir(root: str | Path, names: list[str]) -> tuple[dict[str, str], dict[str, int]]:
    base = Path(root)
    return (
        {n: sha256_file(base / n) for n in names},
        {n: (base / n).stat().st_size for n in names},
    )


def _content_hash(fingerprint: str, files: dict[str, str]) -> str:
    joined = fingerprint + "\n" + "\n".join(f"{k}={v}" for k, v in sorted(files.items()))
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def make_bundle_id(fingerprint: str, files: dict[str, str], created: float | None = None) -> str:
    """Sortable and content-derived: `<UTC time>-<hash of the model and every file>`."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(created or time.time()))
    return f"{stamp}-{_content_hash(fingerprint, files)}"


def verify_identity(manifest: Manifest) -> None:
    """The bundle id ends in the hash of the model fingerprint and every file checksum, so
    a manifest whose file list or checksums were edited no longer matches its own id:
    refused, since the id is what promotion, the registry and serving agree on."""
    bid = manifest.bundle_id
    suffix = bid.rsplit("-", 1)[-1]
    want = _content_hash(manifest.model_fingerprint, manifest.files)
    if suffix != want:
        raise BundleError(
            f"bundle {bid}: manifest.json lists files (or a model) whose checksums hash to "
            f"{want}, not to the id's {suffix}: the manifest was edited after the build; "
            "refusing it"
        )


def read_verified(root: str | Path, manifest: Manifest, name: str) -> bytes:
    """The whole content of one listed file, read ONCE and checked against the manifest.

    Loaders parse these very bytes, so what is served is exactly what was hashed: a file
    changed on disk after this read cannot reach serving (no re-read, no memory map)."""
    path = Path(root) / name
    expected = manifest.files.get(name)
    if expected is None:
        raise BundleError(f"bundle {manifest.bundle_id}: {name} is not listed in its manifest")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"bundle {manifest.bundle_id}: {name} is missing") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise BundleError(
            f"bundle {manifest.bundle_id}: {name} has sha256 {actual[:12]}…, the manifest "
            f"says {expected[:12]}… (tampered or corrupted); refusing to load it"
        )
    return data


def write_manifest(root: str | Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically into a local bundle directory."""
    path = Path(root) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(manifest.to_json())
    tmp.replace(path)
    return path


def read_manifest(root: str | Path) -> Manifest:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise BundleError(f"{root} has no {MANIFEST}: the bundle is incomplete or still building")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    return Manifest.from_dict(doc)


def verify_files(root: str | Path, manifest: Manifest) -> None:
    """Re-hash every file the manifest lists; raise BundleError naming the first mismatch."""
    verify_identity(manifest)
    base = Path(root)
    for name, expected in sorted(manifest.files.items()):
        path = base / name
        if not path.is_file():
            raise BundleError(f"bundle {manifest.bundle_id}: {name} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"bundle {manifest.bundle_id}: {name} has sha256 {actual[:12]}…, the manifest "
                f"says {expected[:12]}… (tampered or corrupted); refusing to load it"
            )


def verify_model(manifest: Manifest, *, fingerprint: str, embedding_dim: int) -> None:
    """The loaded query tower must be the one the item embeddings were made with."""
    if fingerprint != manifest.model_fingerprint:
        raise BundleError(
            f"bundle {manifest.bundle_id}: its manifest names model {manifest.model_fingerprint[:12]}…"
            f" but the bundled towers are {fingerprint[:12]}…; user and item embeddings would "
            "come from different models, refusing to load it"
        )
    if embedding_dim != manifest.embedding_dim:
        raise BundleError(
            f"bundle {manifest.bundle_id}: model embedding dim {embedding_dim} != manifest "
            f"{manifest.embedding_dim}"
        )
