"""Move a failed batch out of the pipeline's way, keeping every byte of it.

The whole batch directory goes to `<quarantine_dir>/<snapshot id>/` (a timestamp
suffix when that name is taken), with the validation report beside its files as
`validation.json`. Locally this is a rename; on S3 or across stores every object is
copied, the copy verified, and only then is the source deleted.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from shortlist.errors import ShortlistError
from shortlist.storage import is_remote, open_store

REPORT_NAME = "validation.json"


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).strip("._") or "batch"


def destination(quarantine_dir: str, key: str, endpoint_url: str | None = None) -> str:
    """A free `<quarantine_dir>/<key>` (suffixed with the UTC time if taken)."""
    root = open_store(quarantine_dir, endpoint_url=endpoint_url)
    name = safe_name(key)
    if root.list(name):
        name = f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        while root.list(name):
            name += "x"
    return root.join(name)


def move_batch(data_uri: str, dest_uri: str, endpoint_url: str | None = None) -> None:
    """Move everything under data_uri to dest_uri (nothing deleted before it is copied)."""
    if not is_remote(data_uri) and not is_remote(dest_uri):
        Path(dest_uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(data_uri), str(dest_uri))  # rename on one filesystem
        return
    src = open_store(data_uri, endpoint_url=endpoint_url)
    dst = open_store(dest_uri, endpoint_url=endpoint_url)
    if is_remote(data_uri) and not getattr(src, "prefix", ""):
        raise ShortlistError(f"refusing to move a whole bucket ({data_uri}) into quarantine")
    keys = src.list()
    for key in keys:
        dst.write_bytes(key, src.read_bytes(key))
    missing = sorted(set(keys) - set(dst.list()))
    if missing:
        raise ShortlistError(f"quarantine copy to {dest_uri} is missing {missing}; source kept")
    src.delete_prefix("")


def quarantine(
    data_uri: str, dest_uri: str, report_json: str, endpoint_url: str | None = None
) -> str:
    """Move the batch to dest_uri and write the report beside its files."""
    move_batch(data_uri, dest_uri, endpoint_url=endpoint_url)
    open_store(dest_uri, endpoint_url=endpoint_url).write_bytes(REPORT_NAME, report_json.encode())
    return dest_uri
