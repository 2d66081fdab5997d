"""The reference snapshot: the last batch that passed validation.

Volume and drift are measured against it. It is a plain dataset directory (three
tables + snapshot.json), replaced only by an accepted batch and only as a whole:
locally the copy is assembled in a temp directory beside it and swapped in by rename;
on S3 (no directory rename) the tables are written first and snapshot.json last, and
readers verify every table against the manifest's checksums.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from shortlist.data import schema
from shortlist.data.io import sha256_bytes
from shortlist.errors import ShortlistError
from shortlist.storage import is_remote, open_store
from shortlist.validation.batch import Batch, load_batch

FILES = (*schema.TABLES, schema.SNAPSHOT)


def load_reference(uri: str, endpoint_url: str | None = None) -> Batch | None:
    """The reference batch, or None when none has been accepted yet.

    A reference whose tables do not match its own manifest is an error, not "no
    reference": silently skipping drift checks would let anything through.
    """
    store = open_store(uri, endpoint_url=endpoint_url)
    if not store.exists(schema.SNAPSHOT):
        return None
    ref = load_batch(uri, endpoint_url=endpoint_url)
    if not ref.intact:
        bad = ref.files.loc[~ref.files["checksum_matches_manifest"], "file"].tolist()
        raise ShortlistError(f"reference {uri} is corrupt ({', '.join(bad)} do not match)")
    return ref


def same_place(a: str, b: str) -> bool:
    if is_remote(a) or is_remote(b):
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def publish_reference(
    data_uri: str, reference_uri: str, manifest: dict, endpoint_url: str | None = None
) -> None:
    """Copy the accepted batch's tables and snapshot.json to reference_uri, whole."""
    src = open_store(data_uri, endpoint_url=endpoint_url)
    blobs = {name: src.read_bytes(name) for name in FILES}
    sums = manifest.get("checksums") or {}
    for name in schema.TABLES:
        if sums.get(name) != sha256_bytes(blobs[name]):
            raise ShortlistError(f"{data_uri}/{name} changed during validation; not published")
    if is_remote(reference_uri):
        dst = open_store(reference_uri, endpoint_url=endpoint_url)
        for name in schema.TABLES:
            dst.write_bytes(name, blobs[name])
        dst.write_bytes(schema.SNAPSHOT, blobs[schema.SNAPSHOT])  # commit marker, last
        return
    target = Path(reference_uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.new-"))
    try:
        for name, data in blobs.items():
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
