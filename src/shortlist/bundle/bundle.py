"""Build and load serving bundles: everything serving needs, as one verified unit.

A bundle directory (local or `s3://`) holds:

    model/             towers.safetensors + towers.json + items.parquet (the query tower
                       with its feature preprocessing; the item tower too, for the canary)
                       and ranker* files when the model dir has a ranker
    item_embeddings.npy  (n, d) float32, row i = item_ids[i]: the L2-normalised item
                       embedding plus, when the towers use an inference popularity term,
                       one column of weight * temperature * log popularity (`item_vectors`;
                       queries carry a 1 there), so the index serves the corrected score
    index.faiss        the ANN index over those rows (inner product)
    item_ids.parquet   the id map: row -> item_id
    items.parquet      item feature snapshot, row-aligned with the index
    users.parquet      user feature snapshot
    histories.parquet  per user, the most recent items (oldest first) with timestamps
    seen.parquet       per user, the index rows of EVERY item they interacted with
                       (exclude_seen removes all of them, whatever the history length)
    popularity.npy     recent-trend prior per row (new users), float32
    manifest.json      written LAST: checksums of all of the above and the model contract

Loading reads every file ONCE into memory, checks those bytes against the manifest's
sha256 and parses the same bytes (no memory map, no second read): what serves is what
was verified, and a file changed on disk afterwards can no longer reach a request. The
manifest must match its own content-derived bundle id and the loaded model (fingerprint,
dim, item count); any mismatch is a BundleError naming the file. Nothing is unpickled:
safetensors, Parquet, `.npy` with allow_pickle=False and FAISS's own format.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from shortlist.bundle import gentle
from shortlist.bundle.manifest import (
    MANIFEST,
    Manifest,
    checksum_dir,
    make_bundle_id,
    read_manifest,
    read_verified,
    verify_identity,
    verify_model,
    write_manifest,
)
from shortlist.bundle.seen import SeenSets, seen_table
from shortlist.config import ConfigError, Params
from shortlist.data import schema
from shortlist.errors import BundleError
from shortlist.ranking.sources import trend_popularity
from shortlist.storage import is_remote, open_store

if TYPE_CHECKING:
    import faiss

    from shortlist.models.two_tower import TwoTowerRetriever
    from shortlist.ranking.ranker import Ranker

log = logging.getLogger(__name__)

MODEL = "model"
EMBEDDINGS = "item_embeddings.npy"
INDEX = "index.faiss"
ITEM_IDS = "item_ids.parquet"
ITEMS = "items.parquet"
USERS = "users.parquet"
HISTORIES = "histories.parquet"
POPULARITY = "popularity.npy"
SEEN = "seen.parquet"
MODEL_FILES = ("towers.safetensors", "towers.json", "items.parquet")


@dataclass
class LoadedBundle:
    """A verified bundle in memory. Every field comes from the same bundle directory."""

    bundle_id: str
    manifest: Manifest
    retriever: TwoTowerRetriever
    index: faiss.Index
    item_ids: np.ndarray  # str, row -> item_id
    item_vectors: np.ndarray  # (n, d) float32, in memory (read-only), never a memory map
    items: pd.DataFrame  # row-aligned with item_ids
    histories: dict[str, list[str]]  # user_id -> recent item ids, oldest first
    popularity: np.ndarray  # row-aligned recent-trend prior
    ranker: Ranker | None = None
    users: pd.DataFrame | None = None
    history_table: pd.DataFrame | None = None  # user_id, item_ids, timestamps
    location: str = ""
    local_dir: str = ""
    seen: SeenSets | None = None  # None for bundles built without it
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- build


def read_catalog_data(data_dir: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    """(interactions, items, users, snapshot_id) from a dataset dir or a split dir."""
    import json

    from shortlist.data.io import read_table

    store = open_store(data_dir)
    if store.exists(schema.INTERACTIONS):
        interactions = read_table(store, schema.INTERACTIONS)
        meta = schema.SNAPSHOT
    elif store.exists(schema.TRAIN):
        parts = [schema.TRAIN, schema.VALIDATION, schema.TEST]
        interactions = pd.concat(
            [read_table(store, p) for p in parts if store.exists(p)], ignore_index=True
        )
        meta = schema.SPLIT_MANIFEST
    else:
        raise BundleError(f"{data_dir} holds neither a dataset nor a split directory")
    items = read_table(store, schema.ITEMS)
    users = read_table(store, schema.USERS) if store.exists(schema.USERS) else pd.DataFrame()
    snapshot = json.loads(store.read_bytes(meta)) if store.exists(meta) else {}
    return interactions, items, users, str(snapshot.get("snapshot_id", ""))


def recent_histories(interactions: pd.DataFrame, n: int) -> pd.DataFrame:
    """Per user the last `n` interactions ordered by (timestamp, item_id), oldest first."""
    df = pd.DataFrame(
        {
            "user_id": interactions[schema.USER_ID].astype(str).to_numpy(),
            "item_id": interactions[schema.ITEM_ID].astype(str).to_numpy(),
            "timestamp": interactions[schema.TIMESTAMP].astype("int64").to_numpy(),
        }
    ).sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    df = df.groupby("user_id", sort=False).tail(n)
    grouped = df.groupby("user_id", sort=True)
    return pd.DataFrame(
        {
            "user_id": list(grouped.groups.keys()),
            "item_ids": grouped["item_id"].agg(list).to_list(),
            "timestamps": grouped["timestamp"].agg(list).to_list(),
        }
    )


def _lineage(retriever: Any) -> dict[str, Any]:
    meta = getattr(retriever, "meta", {}) or {}
    return {
        k: v
        for k, v in meta.items()
        if any(word in k.lower() for word in ("run_id", "mlflow", "version"))
        and isinstance(v, str | int | float)
    }


def _copy_model(model_dir: Path, dest: Path) -> bool:
    """Copy the towers and any ranker* files; True when they hold a ranker."""
    from shortlist.ranking.ranker import Ranker

    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if not (model_dir / name).is_file():
            raise BundleError(f"{model_dir} has no {name}: not a trained towers directory")
        shutil.copyfile(model_dir / name, dest / name)
    rankers = sorted(model_dir.glob("ranker*"))
    for path in rankers:
        if path.is_dir():
            shutil.copytree(path, dest / path.name)
        else:
            shutil.copyfile(path, dest / path.name)
    return Ranker.exists(str(dest))


def _clear_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def _check_history_window(params: Params, model_dir: Path) -> None:
    """Refuse, before touching the slot, a history window the ranker's features outgrow."""
    from shortlist.ranking.features import FEATURE_HISTORY
    from shortlist.ranking.ranker import Ranker

    if not Ranker.exists(str(model_dir)):
        return
    if params.bundle.history_len < FEATURE_HISTORY:
        raise ConfigError(
            f"bundle.history_len is {params.bundle.history_len}, but the ranker's features "
            f"read the last {FEATURE_HISTORY} items of a history: serving would compute "
            f"different features than training did. Set bundle.history_len >= "
            f"{FEATURE_HISTORY}."
        )


def build_bundle(
    params: Params,
    *,
    model_dir: str,
    data_dir: str,
    dest: str,
    lineage: dict[str, Any] | None = None,
    progress: bool = True,
) -> Manifest:
    """Re-embed the catalog with `model_dir`'s item tower, index it, write a bundle to `dest`.

    `dest` (a slot: local dir or s3://) is cleared first and `manifest.json` is written
    last, so an interrupted build leaves a slot that `load_bundle` refuses.
    """
    import faiss
    import torch

    from shortlist.index.ann import build_index
    from shortlist.index.embed import embed_catalog
    from shortlist.models.two_tower import TwoTowerRetriever

    _check_history_window(params, Path(model_dir))
    torch.set_num_threads(params.towers.threads)
    t0 = time.perf_counter()
    remote = is_remote(dest)
    staging = Path(params.bundle.staging_dir) / f"build-{uuid.uuid4().hex[:8]}"
    work = staging if remote else Path(dest)
    if remote:
        open_store(dest).delete_prefix("")
    _clear_dir(work)
    try:
        has_ranker = _copy_model(Path(model_dir), work / MODEL)
        retriever = TwoTowerRetriever.load(str(work / MODEL))
        interactions, items, users, snapshot_id = read_catalog_data(data_dir)
        items = items.drop_duplicates(schema.ITEM_ID, keep="last").reset_index(drop=True)
        items[schema.ITEM_ID] = items[schema.ITEM_ID].astype(str)
        item_ids = items[schema.ITEM_ID].to_numpy(dtype=str)
        unknown = set(interactions[schema.ITEM_ID].astype(str).unique()) - set(item_ids)
        if unknown:
            log.warning("%d interacted items are missing from the item table", len(unknown))

        embed_stats: dict[str, Any] = {}
        vectors = embed_catalog(
            retriever,
            items,
            work / EMBEDDINGS,
            batch_size=params.index.embed_batch_size,
            progress=progress,
            stats=embed_stats,
        )
        index_stats: dict[str, Any] = {}
        index = build_index(vectors, params.index, metric="ip", stats=index_stats)
        faiss.write_index(index, str(work / INDEX))
        del index

        pd.DataFrame({schema.ITEM_ID: item_ids}).to_parquet(work / ITEM_IDS, index=False)
        items.to_parquet(work / ITEMS, index=False)
        users.to_parquet(work / USERS, index=False)
        histories = recent_histories(interactions, params.bundle.history_len)
        histories.to_parquet(work / HISTORIES, index=False)
        popularity = trend_popularity(
            interactions, item_ids, params.bundle.popularity_half_life_days
        )
        np.save(work / POPULARITY, popularity, allow_pickle=False)
        seen_table(interactions, item_ids).to_parquet(work / SEEN, index=False)

        names = sorted(
            str(p.relative_to(work)) for p in work.rglob("*") if p.is_file() and p.name != MANIFEST
        )
        files, sizes = checksum_dir(work, names)
        created = time.time()
        manifest = Manifest(
            bundle_id=make_bundle_id(retriever.fingerprint, files, created),
            model_fingerprint=retriever.fingerprint,
            embedding_dim=int(vectors.shape[1]),
            popularity_column=int(vectors.shape[1]) > int(retriever.embedding_dim),
            item_count=len(item_ids),
            user_count=len(histories),
            files=files,
            sizes=sizes,
            index_type=index_stats["type"],
            index_params=index_stats["params"],
            data_snapshot_id=snapshot_id,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
            mlflow={**_lineage(retriever), **(lineage or {})},
            has_ranker=has_ranker,
            stats={
                "embed": embed_stats,
                "index": index_stats,
                "build_seconds": round(time.perf_counter() - t0, 3),
            },
        )
        if remote:
            store = open_store(dest)
            for name in names:
                store.upload_file(name, work / name)
            store.write_bytes(MANIFEST, manifest.to_json().encode())
        else:
            write_manifest(work, manifest)
    finally:
        if remote:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("bundle %s written to %s", manifest.bundle_id, dest)
    return manifest


# ----------------------------------------------------------------------------- load


def _download(location: str, cache_dir: str | None) -> Path:
    """Fetch an s3:// bundle into the cache (files already there and intact are kept)."""
    import json

    from shortlist.bundle.manifest import sha256_file

    store = open_store(location)
    try:
        doc = json.loads(store.read_bytes(MANIFEST))
    except FileNotFoundError:
        raise BundleError(
            f"{location} has no {MANIFEST}: the bundle is incomplete or still building"
        ) from None
    manifest = Manifest.from_dict(doc)
    base = Path(cache_dir or tempfile.gettempdir()) / manifest.bundle_id
    base.mkdir(parents=True, exist_ok=True)
    for name, digest in manifest.files.items():
        path = base / name
        if path.is_file() and sha256_file(path) == digest:
            continue
        store.download_file(name, path)
    (base / MANIFEST).write_text(manifest.to_json())
    return base


def verify_location(location: str, *, cache_dir: str | None = None) -> Manifest:
    """Check a bundle without loading it: its manifest matches its id and every listed
    file is present with the checksum the manifest records (s3:// is fetched first)."""
    from shortlist.bundle.manifest import verify_files

    root = _download(location, cache_dir) if is_remote(location) else Path(location)
    manifest = read_manifest(root)
    verify_files(root, manifest)
    return manifest


def _load_ranker(model_dir: Path) -> Any:
    """The ranker saved beside the towers (its own loader, no unpickling)."""
    try:
        from shortlist.ranking.ranker import Ranker

        return Ranker.load(str(model_dir))
    except (ImportError, ValueError, KeyError, OSError) as exc:
        raise BundleError(f"the bundle's ranker does not load: {exc}") from None


def _npy(data: bytes) -> np.ndarray:
    import io

    array = np.load(io.BytesIO(data), allow_pickle=False)
    array.setflags(write=False)  # what was verified is never changed in memory either
    return array


def _parquet_source(data: bytes) -> Any:
    import pyarrow as pa

    return pa.BufferReader(data)


def _load_model_files(root: Path, manifest: Manifest, has_ranker: bool) -> tuple[Any, Any]:
    """The towers (and ranker) from the verified bytes of `model/*`.

    The model loaders read a directory, so the verified bytes are written to a private
    temporary directory (mode 0700) that is removed once they are in memory: a change to
    the bundle's own `model/` files after verification never reaches the loaders."""
    from shortlist.models.two_tower import TwoTowerRetriever

    bid = manifest.bundle_id
    prefix = f"{MODEL}/"
    names = sorted(n for n in manifest.files if n.startswith(prefix))
    with tempfile.TemporaryDirectory(prefix="shortlist-verified-") as tmp:
        private = Path(tmp)
        for name in names:
            dest = private / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(read_verified(root, manifest, name))
        try:
            retriever = TwoTowerRetriever.load(str(private / MODEL))
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise BundleError(f"bundle {bid}: the bundled towers do not load: {exc}") from None
        ranker = _load_ranker(private / MODEL) if has_ranker else None
    return retriever, ranker


def load_bundle(location: str, *, cache_dir: str | None = None) -> LoadedBundle:
    """Load and verify the bundle at `location` (a local dir or s3://).

    Every file is read once, checked against its sha256 and parsed from those bytes; the
    manifest must match its own bundle id. Raises BundleError when the manifest is
    missing or edited, a file is missing or differs, or the bundled model/embeddings/index
    disagree with the manifest (fingerprint, dim, item count).
    """
    import faiss

    from shortlist.index.ann import set_search_params

    root = _download(location, cache_dir) if is_remote(location) else Path(location)
    manifest = read_manifest(root)
    verify_identity(manifest)
    bid = manifest.bundle_id
    for name in sorted(manifest.files):  # a missing file is named before any parsing
        if not (root / name).is_file():
            raise BundleError(f"bundle {bid}: {name} is missing")
    retriever, ranker = _load_model_files(root, manifest, manifest.has_ranker)
    # The index holds the serving-score vectors (embedding + popularity column) or, for a
    # bundle built before the column was indexed, the embeddings alone: both serve.
    width = retriever.index_dim if manifest.popularity_column else retriever.embedding_dim
    verify_model(manifest, fingerprint=retriever.fingerprint, embedding_dim=width)
    if manifest.dtype != "float32" or manifest.metric != "ip" or not manifest.normalised:
        raise BundleError(f"bundle {bid}: unsupported embedding contract in manifest")

    vectors = _npy(read_verified(root, manifest, EMBEDDINGS))
    want = (manifest.item_count, manifest.embedding_dim)
    if vectors.shape != want or vectors.dtype != np.float32:
        raise BundleError(
            f"bundle {bid}: embeddings are {vectors.shape} {vectors.dtype}, want {want}"
        )
    for start in range(0, len(vectors), 65_536):  # NaN/inf rows would silently serve nothing
        if not np.isfinite(vectors[start : start + 65_536]).all():
            raise BundleError(f"bundle {bid}: {EMBEDDINGS} holds NaN or infinite values")
        gentle.pause()
    blob = read_verified(root, manifest, INDEX)
    index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
    del blob
    if index.ntotal != manifest.item_count or index.d != manifest.embedding_dim:
        raise BundleError(
            f"bundle {bid}: index holds {index.ntotal} x {index.d}, manifest says {want}"
        )
    set_search_params(index, manifest.index_params)
    # Tables are converted a slice at a time: serving loads bundles beside live requests.
    item_ids = gentle.string_column(
        _parquet_source(read_verified(root, manifest, ITEM_IDS)), schema.ITEM_ID
    )
    if len(item_ids) != manifest.item_count:
        raise BundleError(f"bundle {bid}: id map has {len(item_ids)} rows, want {want[0]}")
    items = gentle.read_parquet(_parquet_source(read_verified(root, manifest, ITEMS)))
    users = gentle.read_parquet(_parquet_source(read_verified(root, manifest, USERS)))
    table = gentle.read_parquet(_parquet_source(read_verified(root, manifest, HISTORIES)))
    histories = {
        str(u): [str(i) for i in h]
        for u, h in zip(table["user_id"], table["item_ids"], strict=True)
    }
    popularity = _npy(read_verified(root, manifest, POPULARITY))
    if len(popularity) != manifest.item_count:
        raise BundleError(f"bundle {bid}: popularity has {len(popularity)} rows, want {want[0]}")
    seen = None
    if SEEN in manifest.files:  # bundles built before seen.parquet exclude their histories
        seen = SeenSets.from_parquet(_parquet_source(read_verified(root, manifest, SEEN)))
        if len(seen.values) and int(seen.values.max()) >= manifest.item_count:
            raise BundleError(f"bundle {bid}: {SEEN} names rows beyond the {want[0]} items")
    return LoadedBundle(
        bundle_id=bid,
        manifest=manifest,
        retriever=retriever,
        index=index,
        item_ids=item_ids,
        item_vectors=vectors,
        items=items,
        histories=histories,
        popularity=popularity,
        ranker=ranker,
        users=users,
        history_table=table,
        location=str(location),
        local_dir=str(root),
        seen=seen,
    )


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[str]:
    """A local directory holding the bundle at `location` (downloaded when s3://)."""
    if not is_remote(location):
        yield str(location)
        return
    store = open_store(location)
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        for key in store.list(""):
            store.download_file(key, Path(tmp) / key)
        yield tmp
