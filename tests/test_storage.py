"""One storage suite, run against a local directory and a real S3 endpoint (SeaweedFS).

The conditional writes are what make the live pointer safe to flip, so they are tested
under contention: of N writers that read the same version, exactly one may win.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import uuid
from pathlib import Path

import pytest

from shortlist.errors import ShortlistError
from shortlist.storage import LocalStore, PreconditionFailed, S3Store, Store, open_store


@pytest.fixture(scope="module")
def s3_bucket(s3_server) -> str:  # noqa: ANN001
    """One bucket for this module (creating one costs ~0.5 s); tests get fresh prefixes."""
    return s3_server.new_bucket("storage")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return open_store(tmp_path / "store")
    request.getfixturevalue("s3")  # AWS_* variables for this test
    bucket = request.getfixturevalue("s3_bucket")
    # open_store finds the endpoint and credentials through the AWS_* environment; the
    # store prefix shares its first characters with a sibling to catch prefix leaks.
    prefix = f"t{uuid.uuid4().hex[:8]}"
    open_store(f"s3://{bucket}/{prefix}x").write_bytes("run/1/x", b"sibling")
    return open_store(f"s3://{bucket}/{prefix}")


def test_open_store_picks_the_backend(store: Store) -> None:
    assert isinstance(store, LocalStore | S3Store)
    assert store.join("a", "b").endswith("/a/b")


def test_write_read_exists(store: Store) -> None:
    assert not store.exists("a/b.txt")
    assert store.read_versioned("a/b.txt") is None
    with pytest.raises(FileNotFoundError, match="b.txt"):
        store.read_bytes("a/b.txt")
    store.write_bytes("a/b.txt", b"hello")
    assert store.exists("a/b.txt")
    assert store.read_bytes("a/b.txt") == b"hello"
    store.write_bytes("a/b.txt", b"again")  # plain write overwrites
    assert store.read_bytes("a/b.txt") == b"again"


def test_list_is_relative_sorted_and_by_directory(store: Store) -> None:
    for key in ["run/1/x", "run/1/y/z", "run/10/x", "top"]:
        store.write_bytes(key, key.encode())
    assert store.list() == ["run/1/x", "run/1/y/z", "run/10/x", "top"]
    # a prefix names a directory (or one key), never a string prefix of a sibling
    assert store.list("run/1") == ["run/1/x", "run/1/y/z"]
    assert store.list("run/1/") == ["run/1/x", "run/1/y/z"]
    assert store.list("top") == ["top"]
    assert store.list("missing") == []


def test_delete_prefix(store: Store) -> None:
    for key in ["run/1/x", "run/1/y/z", "run/10/x", "top"]:
        store.write_bytes(key, b"1")
    etag = store.read_versioned("run/1/x").etag
    store.replace_if_match("run/1/x", b"2", etag)  # may leave a lock file beside it
    assert store.delete_prefix("run/1") == 2
    assert store.list() == ["run/10/x", "top"]
    assert store.delete_prefix("top") == 1
    assert store.delete_prefix("nothing/here") == 0
    assert store.list() == ["run/10/x"]


def test_upload_download(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    payload = bytes(range(256)) * 4096  # 1 MiB
    src.write_bytes(payload)
    store.upload_file("files/blob.bin", src)
    assert store.read_bytes("files/blob.bin") == payload
    dest = tmp_path / "out" / "deep" / "blob.bin"
    store.download_file("files/blob.bin", dest)
    assert dest.read_bytes() == payload


def test_put_if_absent(store: Store) -> None:
    etag = store.put_if_absent("ptr", b"first")
    assert etag == store.read_versioned("ptr").etag
    with pytest.raises(PreconditionFailed):
        store.put_if_absent("ptr", b"second")
    assert store.read_bytes("ptr") == b"first"


def test_replace_if_match(store: Store) -> None:
    store.write_bytes("ptr", b"v1")
    stale = store.read_versioned("ptr")
    store.write_bytes("ptr", b"v2")
    with pytest.raises(PreconditionFailed):
        store.replace_if_match("ptr", b"from-stale", stale.etag)
    assert store.read_bytes("ptr") == b"v2"

    current = store.read_versioned("ptr")
    new_etag = store.replace_if_match("ptr", b"v3", current.etag)
    after = store.read_versioned("ptr")
    assert after.data == b"v3"
    assert new_etag == after.etag  # the returned tag chains into the next swap
    store.replace_if_match("ptr", b"v4", new_etag)
    assert store.read_bytes("ptr") == b"v4"


def test_replace_if_match_on_missing_key_fails(store: Store) -> None:
    store.write_bytes("other", b"x")
    etag = store.read_versioned("other").etag
    with pytest.raises(PreconditionFailed):
        store.replace_if_match("ptr", b"x", etag)
    assert not store.exists("ptr")


def _race_round(store: Store, key: str, writers: int, round_: int) -> list[int]:
    barrier = threading.Barrier(writers)
    winners: list[int] = []
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        seen = store.read_versioned(key)
        barrier.wait()  # everyone holds the same version before anyone writes
        try:
            store.replace_if_match(key, f"{round_}:{i}".encode(), seen.etag)
            winners.append(i)
        except PreconditionFailed:
            pass
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return winners


def test_compare_and_swap_race_threads(store: Store) -> None:
    store.write_bytes("live", b"start")
    writers, rounds = 8, 5
    for round_ in range(rounds):
        winners = _race_round(store, "live", writers, round_)
        assert len(winners) == 1, f"round {round_}: winners {winners}"
        assert store.read_bytes("live") == f"{round_}:{winners[0]}".encode()


def _process_writer(root: str, name: str, rounds: int, barrier, results) -> None:  # noqa: ANN001
    store = LocalStore(root)
    for round_ in range(rounds):
        seen = store.read_versioned("live")
        barrier.wait()
        try:
            store.replace_if_match("live", f"{round_}:{name}".encode(), seen.etag)
            results.put((round_, name, True))
        except PreconditionFailed:
            results.put((round_, name, False))
        barrier.wait()  # next round starts from the settled value


def test_compare_and_swap_race_processes_local(tmp_path: Path) -> None:
    root = tmp_path / "store"
    LocalStore(root).write_bytes("live", b"start")
    rounds = 10
    ctx = mp.get_context("fork")  # separate processes; no shared lock object
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_process_writer, args=(str(root), name, rounds, barrier, results))
        for name in ("a", "b")
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in range(2 * rounds)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for round_ in range(rounds):
        wins = [name for r, name, won in outcomes if r == round_ and won]
        assert len(wins) == 1, f"round {round_}: {outcomes}"
    last_winner = next(n for r, n, won in outcomes if r == rounds - 1 and won)
    assert LocalStore(root).read_bytes("live") == f"{rounds - 1}:{last_winner}".encode()


def test_local_keys_cannot_escape_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ShortlistError, match="escapes"):
        store.write_bytes("../outside", b"x")
    assert not (tmp_path / "outside").exists()


def test_s3_wrong_credentials_are_refused(s3, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    bucket = s3.new_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied|403"):
        S3Store(f"s3://{bucket}").write_bytes("k", b"x")
