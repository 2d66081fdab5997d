"""The one bundle reference serving reads, and the watcher that swaps it.

`BundleHolder.current` is a single attribute: a request reads it ONCE at its start and
uses that `ServingBundle` to the end, so a swap never changes the bundle under a running
request (Python attribute assignment is atomic). The watcher thread polls the live
pointer (`Slots(root).read_pointer()`) every `serving.poll_seconds`; when it names a
different bundle it loads that bundle fully (checksums and manifest verified by
`load_bundle`), builds the serving lookups, and only then assigns the reference.

A bundle that fails to load (`BundleError`, or any other error) is logged, counted and
refused: the current bundle keeps serving, and the same pointer state is retried only
after `RETRY_REFUSED_SECONDS` (so a tampered 1M-item bundle is not re-hashed every poll).
The previously live bundle stays in memory (`serving.keep_previous`), so a rollback to
it is a reference swap, visible within one poll.

Serving never reads a bundle file after verifying it (`load_bundle` parses the verified
bytes). The live bundle's local files are still watched: each poll compares their size
and modification time with what was loaded and re-hashes a file that changed; a file
that no longer matches the manifest is reported (`last_error`, `tampered`, the log) while
the verified copy in memory keeps serving. At start, a live bundle that does not verify
keeps the server not ready, with a message naming the file, and is retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from shortlist.bundle import gentle
from shortlist.config import Params
from shortlist.serving.recommend import ServingBundle, prepare, warm_up
from shortlist.storage import open_store

log = logging.getLogger(__name__)

RETRY_REFUSED_SECONDS = 60.0
CANARY_FILE = "canary.json"


class BundleHolder:
    """Holds the live `ServingBundle` and keeps it in step with the live pointer."""

    def __init__(
        self,
        params: Params,
        root: str | None = None,
        *,
        on_swap: Callable[[ServingBundle], None] | None = None,
        on_refused: Callable[[str, Exception], None] | None = None,
        on_canary: Callable[[dict[str, Any] | None], None] | None = None,
    ) -> None:
        self.params = params
        self.root = str(root or params.bundle.root)
        self.current: ServingBundle | None = None
        self._previous: ServingBundle | None = None
        self._on_swap = on_swap
        self._on_refused = on_refused
        self._on_canary = on_canary
        self._refused: dict[tuple[str, str], float] = {}  # (slot, bundle_id) -> when
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._slots = None
        self.last_error: str | None = None
        self.tampered: str | None = None  # the live bundle's files changed after loading
        self._file_stats: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns)
        self.swaps = 0
        #: Whether a poll has read the pointer yet, and whether it names a live bundle
        #: (then /ready waits for that bundle instead of counting the bandit as ready).
        self.polled = False
        self.live_named = False

    # --- the pointer ---------------------------------------------------------------
    def _slots_obj(self):
        if self._slots is None:
            from shortlist.bundle.slots import Slots

            self._slots = Slots(self.root, endpoint_url=self.params.storage.s3_endpoint_url)
        return self._slots

    def refresh(self) -> bool:
        """One poll: swap to the bundle the pointer names if it is not live. True if swapped."""
        slots = self._slots_obj()
        pointer = slots.read_pointer()
        self.live_named = bool(pointer and pointer.get("live_slot"))
        self.polled = True
        if not self.live_named:
            return False
        slot, bundle_id = str(pointer["live_slot"]), str(pointer.get("bundle_id") or "")
        live = self.current
        if live is not None and live.bundle_id == bundle_id:
            self._refresh_canary(live)
            self._check_files(live)
            return False
        if self._previous is not None and self._previous.bundle_id == bundle_id:
            self._swap(self._previous)  # a rollback: the old bundle is still in memory
            return True
        refused_at = self._refused.get((slot, bundle_id))
        if refused_at is not None and time.time() - refused_at < RETRY_REFUSED_SECONDS:
            return False
        location = slots.slot_location(slot)
        try:
            loaded = self._load(location)
            if bundle_id and loaded.bundle_id != bundle_id:
                raise_stale(location, loaded.bundle_id, bundle_id)
        except _StaleSlot as exc:
            log.info("%s", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - any bad bundle is refused, serving goes on
            self._refused[(slot, bundle_id)] = time.time()
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "refused bundle %s in slot %s (%s); still serving %s",
                bundle_id,
                slot,
                self.last_error,
                live.bundle_id if live else "nothing",
            )
            if self._on_refused is not None:
                self._on_refused(bundle_id, exc)
            return False
        self._swap(loaded)
        return True

    def _load(self, location: str) -> ServingBundle:
        from shortlist.bundle.bundle import load_bundle

        t0 = time.perf_counter()
        # Requests in flight get the GIL back fast and meet no full GC pass meanwhile.
        with gentle.short_switch_interval(), gentle.no_full_collections():
            bundle = load_bundle(location)
            sb = prepare(bundle, location)
            warm_up(sb, self.params)
        sb.canary = read_canary(location, sb.bundle_id)
        log.info(
            "loaded bundle %s from %s in %.2fs (%d items)",
            sb.bundle_id,
            location,
            time.perf_counter() - t0,
            sb.n_items,
        )
        return sb

    def _swap(self, new: ServingBundle) -> None:
        old = self.current
        self.current = new  # THE swap: one reference assignment
        self._file_stats = _stats(new)
        self.tampered = None
        if self.params.serving.keep_previous and old is not None and old is not new:
            self._previous = old
        elif old is not new:
            self._previous = None
        self.swaps += 1
        self.last_error = None
        log.info("now serving bundle %s (was %s)", new.bundle_id, old.bundle_id if old else None)
        if self._on_swap is not None:
            self._on_swap(new)

    def _check_files(self, live: ServingBundle) -> None:
        """Detect a change to the live bundle's files on disk (never served: memory holds
        the verified bytes) and report it; cleared if the files match again."""
        now = _stats(live)
        if now == self._file_stats:
            return
        from shortlist.bundle.manifest import sha256_file

        manifest = live.bundle.manifest
        base = live.bundle.local_dir
        problem = None
        for name, expected in sorted(manifest.files.items()):
            path = os.path.join(base, name)
            if now.get(path) == self._file_stats.get(path):
                continue
            if path not in now:
                problem = f"{name} is missing"
                break
            if sha256_file(path) != expected:
                problem = f"{name} no longer matches its sha256 in the manifest"
                break
        self._file_stats = now
        if problem is None:
            if self.tampered is not None:
                log.info("live bundle %s: its files match the manifest again", live.bundle_id)
                self.tampered = self.last_error = None
            return
        self.tampered = (
            f"live bundle {live.bundle_id}: {problem} (changed on disk after it was verified; "
            "still serving the verified copy in memory)"
        )
        self.last_error = self.tampered
        log.error("%s", self.tampered)

    def _refresh_canary(self, live: ServingBundle) -> None:
        canary = read_canary(live.location, live.bundle_id)
        if canary != live.canary:
            live.canary = canary
            if self._on_canary is not None:
                self._on_canary(canary)

    # --- the watcher thread --------------------------------------------------------
    def start(self) -> None:
        """Start polling in a daemon thread (the first poll loads the live bundle)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bundle-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Loading a bundle (hashing, parsing, building lookups) must not take CPU from
        # requests in flight: the watcher runs at a lower scheduling priority (Linux
        # threads have their own nice value; elsewhere this is a no-op).
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - a pointer read failure is retried
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("could not read the live pointer under %s: %s", self.root, exc)
            self._stop.wait(self.params.serving.poll_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None


def _stats(sb: ServingBundle) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of each file of a bundle loaded from a local directory ({} for a
    bundle fetched from S3: serving holds its own verified copy, nothing to watch)."""
    from shortlist.storage import is_remote

    bundle = sb.bundle
    base = getattr(bundle, "local_dir", "")
    if not base or is_remote(sb.location):
        return {}
    out = {}
    for name in bundle.manifest.files:
        path = os.path.join(base, name)
        with contextlib.suppress(OSError):
            st = os.stat(path)
            out[path] = (st.st_size, st.st_mtime_ns)
    return out


class _StaleSlot(Exception):
    """The slot was rebuilt between reading the pointer and loading it: just poll again."""


def raise_stale(location: str, found: str, expected: str) -> None:
    raise _StaleSlot(
        f"{location} holds bundle {found}, but the pointer names {expected} "
        "(the slot changed while loading; retrying on the next poll)"
    )


def read_canary(location: str, bundle_id: str) -> dict[str, Any] | None:
    """The bundle's last canary report (`canary.json` in its slot), if it is about this
    bundle (a report naming another bundle id is stale and ignored)."""
    try:
        store = open_store(location)
        if not store.exists(CANARY_FILE):
            return None
        doc = json.loads(store.read_bytes(CANARY_FILE))
        if not isinstance(doc, dict) or doc.get("bundle_id", bundle_id) != bundle_id:
            return None
        return doc
    except Exception as exc:  # noqa: BLE001 - a missing/garbled report only blanks a gauge
        log.warning("could not read %s/%s: %s", location, CANARY_FILE, exc)
        return None
