"""Artifact storage: a local directory (the embedded default) or S3 via boto3.

One small interface so that data snapshots, bundles and the live pointer can live in
either place: read, write, list, delete, and two conditional writes that make a
pointer safe to flip (`put_if_absent`, `replace_if_match`). Locally, atomic replace is
write-to-temp-then-rename; on S3 it is a conditional PUT on the object's ETag, so of
two concurrent writers exactly one wins.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shortlist.errors import ShortlistError


class PreconditionFailed(ShortlistError):
    """A conditional write lost: the object changed (or exists) since it was read."""


@dataclass(frozen=True)
class Versioned:
    """Bytes plus the version tag a conditional write must quote (ETag or content hash)."""

    data: bytes
    etag: str


class Store(Protocol):
    uri: str

    def read_bytes(self, key: str) -> bytes: ...
    def read_versioned(self, key: str) -> Versioned | None: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def put_if_absent(self, key: str, data: bytes) -> str: ...
    def replace_if_match(self, key: str, data: bytes, etag: str) -> str: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def upload_file(self, key: str, path: str | os.PathLike[str]) -> None: ...
    def download_file(self, key: str, path: str | os.PathLike[str]) -> None: ...
    def join(self, *parts: str) -> str: ...


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class LocalStore:
    """A directory. Keys are relative paths with '/' separators."""

    _lock = threading.Lock()  # serialises compare-and-swap between threads of one process

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        root = self.root.resolve()
        if path != root and root not in path.parents:
            raise ShortlistError(f"key {key!r} escapes the store root")
        return path

    def join(self, *parts: str) -> str:
        return str(Path(self.root, *parts))

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri}/{key} does not exist") from None

    def read_versioned(self, key: str) -> Versioned | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return Versioned(data, _md5(data))

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # atomic on POSIX: readers see old or new, never half
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_if_absent(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, path)  # fails if the key exists, atomically, across processes
        except FileExistsError:
            raise PreconditionFailed(f"{self.uri}/{key} already exists") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return _md5(data)

    def replace_if_match(self, key: str, data: bytes, etag: str) -> str:
        # A process-local lock plus an exclusive lock file make the check-then-rename
        # atomic for every writer going through this class, threads or processes.
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = path.with_name(f".{path.name}.lock")
        with self._lock, open(lock_path, "a+b") as lock_fh:
            import fcntl

            fcntl.flock(lock_fh, fcntl.LOCK_EX)
            try:
                current = self.read_versioned(key)
                if current is None or current.etag != etag:
                    raise PreconditionFailed(f"{self.uri}/{key} changed since it was read")
                self.write_bytes(key, data)
            finally:
                fcntl.flock(lock_fh, fcntl.LOCK_UN)
        return _md5(data)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.exists():
            return []
        root = self.root.resolve()
        return sorted(
            str(p.resolve().relative_to(root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete_prefix(self, prefix: str) -> int:
        path = self._path(prefix)
        if path.is_file():
            path.unlink()
            return 1
        if not path.exists():
            return 0
        # counted as list() sees them: lock and temp files (dot files) are not keys
        count = sum(1 for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        shutil.rmtree(path)
        return count

    def upload_file(self, key: str, path: str | os.PathLike[str]) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if Path(path).resolve() != dest:
            tmp = dest.with_name(f".{dest.name}.upload")
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)

    def download_file(self, key: str, path: str | os.PathLike[str]) -> None:
        src = self._path(key)
        if Path(path).resolve() != src:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, path)


_CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
_sessions: dict[tuple[str | None, ...], Any] = {}
_sessions_lock = threading.Lock()


def _boto_session(boto3: Any) -> Any:
    """A boto3 session per credential environment (call with _sessions_lock held).

    boto3's default session resolves credentials once per process; keying on the
    environment lets a changed AWS_* variable take effect without paying ~0.2 s for
    a new session on every store.
    """
    key = tuple(os.environ.get(name) for name in _CREDENTIAL_ENV)
    if key not in _sessions:
        _sessions[key] = boto3.session.Session()
    return _sessions[key]


class S3Store:
    """A bucket and prefix on S3 or an S3-compatible server (endpoint from params/env)."""

    def __init__(self, uri: str, endpoint_url: str | None = None, region: str | None = None):
        import boto3
        from botocore.config import Config

        if not uri.startswith("s3://"):
            raise ShortlistError(f"not an s3:// uri: {uri}")
        bucket, _, prefix = uri[5:].partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or None
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
        with _sessions_lock:  # creating clients from one session is not thread-safe
            self.client = _boto_session(boto3).client(
                "s3",
                endpoint_url=endpoint,
                region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                config=Config(retries={"max_attempts": 3, "mode": "standard"}),
            )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}".lstrip("/") if self.prefix else key

    def join(self, *parts: str) -> str:
        return "/".join([self.uri, *parts])

    def _is_missing(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return code in {"NoSuchKey", "404", "NotFound"}

    def _is_precondition(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return code in {"PreconditionFailed", "412", "ConditionalRequestConflict"}

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.ClientError as exc:
            if self._is_missing(exc):
                raise FileNotFoundError(f"{self.uri}/{key} does not exist") from None
            raise

    def read_versioned(self, key: str) -> Versioned | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError as exc:
            if self._is_missing(exc):
                return None
            raise
        return Versioned(obj["Body"].read(), obj["ETag"])

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_if_absent(self, key: str, data: bytes) -> str:
        try:
            out = self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
            )
        except self.client.exceptions.ClientError as exc:
            if self._is_precondition(exc):
                raise PreconditionFailed(f"{self.uri}/{key} already exists") from None
            raise
        return out["ETag"]

    def replace_if_match(self, key: str, data: bytes, etag: str) -> str:
        try:
            out = self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, IfMatch=etag
            )
        except self.client.exceptions.ClientError as exc:
            if self._is_precondition(exc) or self._is_missing(exc):
                raise PreconditionFailed(f"{self.uri}/{key} changed since it was read") from None
            raise
        return out["ETag"]

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except self.client.exceptions.ClientError as exc:
            if self._is_missing(exc):
                return False
            raise

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        # A prefix names a directory or one key, as in LocalStore: "run/1" must not
        # match "run/10/...", nor the store prefix "a/b" a sibling "a/bc".
        full = self._key(prefix.strip("/")) if prefix.strip("/") else self.prefix
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if not full or key == full or key.startswith(full + "/"):
                    yield key

    def list(self, prefix: str = "") -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in self._iter_keys(prefix))

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self._iter_keys(prefix))
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
        return len(keys)

    def upload_file(self, key: str, path: str | os.PathLike[str]) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def download_file(self, key: str, path: str | os.PathLike[str]) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, self._key(key), str(path))


def open_store(uri: str | os.PathLike[str], endpoint_url: str | None = None) -> Store:
    """A Store for a local directory or an `s3://bucket/prefix` uri."""
    text = str(uri)
    if text.startswith("s3://"):
        return S3Store(text, endpoint_url=endpoint_url)
    return LocalStore(text)


def is_remote(uri: str | os.PathLike[str]) -> bool:
    return str(uri).startswith("s3://")
