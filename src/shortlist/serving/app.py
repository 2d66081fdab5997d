"""The serving API (FastAPI): `shortlist serve` runs `serve(params, ...)`.

Endpoints: `POST /recommend`, `GET /similar-items/{item_id}?k=`, `POST /events` and
`POST /events/batch` (what users did with a served list; see `shortlist.serving.events`:
an event for an unknown request id is a 404, an item that was not in the list or an event
later than feedback.lateness_seconds a 422, each with its reason, and a batch with one
bad event writes nothing), `/health` (the process
is up), `/ready` (a bundle is loaded, or no bundle was ever promoted and the bandit serves;
503 otherwise), `/version` (the live bundle id),
`/metrics` (Prometheus text), `/docs` and `/redoc` (Swagger UI and ReDoc served from the
fastapi-offline package's own files under `/static-offline-docs`, no CDN: they work
offline and behind egress filters). While no bundle is live, /recommend is served by a Thompson-sampling bandit over the
catalog (`shortlist.serving.bandit`, named `bandit` where a bundle id goes) that learns
from the events on its lists. Every answer that carries items names the bundle
that produced it; each request reads the holder's reference once, so it is served by
one bundle even when a swap happens while it runs. Every served list goes to the
impressions log, durably before the response (see `shortlist.serving.impressions`),
with the exact propensity of every item: /recommend explores a few slots of each list by
default (`shortlist.serving.explore`; the expected cost is in the response, the log and
`/metrics`), /similar-items serves the greedy list;
every accepted event to the events log, likewise.
Bad input (k outside 1..serving.max_k, malformed ids, unknown fields, bodies over
serving.max_body_bytes, NaN or Infinity anywhere in a JSON body) is a 422 with a message
saying what is wrong; an error that echoes a value never fails to encode.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from shortlist.config import Params
from shortlist.ranking.cold_share import cold_slots
from shortlist.serving import bandit as bandit_mod
from shortlist.serving.events import (
    BUILTIN_KINDS,
    UNKNOWN_REQUEST,
    EventLog,
    EventLogUnavailable,
    EventsRefused,
    ServedLists,
    check_events,
    events_dir,
)
from shortlist.serving.holder import BundleHolder
from shortlist.serving.impressions import ImpressionLog
from shortlist.serving.metrics import ServingMetrics
from shortlist.serving.recommend import Served, ServingBundle, recommend, similar_items
from shortlist.serving.schemas import (
    ID_PATTERN,
    Event,
    EventBatch,
    EventsAccepted,
    RecommendRequest,
    RecommendResponse,
    SimilarItemsResponse,
)
from shortlist.storage import is_remote

log = logging.getLogger(__name__)


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is answered 422 before it is parsed.

    Checks Content-Length up front and also counts streamed (chunked) bytes. `per_path`
    maps exact paths to (limit, the setting that names it): the events batch endpoint
    takes larger bodies."""

    def __init__(self, app, limit: int, per_path: dict[str, tuple[int, str]] | None = None):
        self.app = app
        self.default = (limit, "serving.max_body_bytes")
        self.per_path = per_path or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, setting = self.per_path.get(scope.get("path", ""), self.default)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    return await self._reject(scope, receive, send, limit, setting)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        try:
            return await self.app(scope, limited_receive, send)
        except _TooLarge:
            return await self._reject(scope, receive, send, limit, setting)

    async def _reject(self, scope, receive, send, limit, setting):
        msg = f"request body exceeds {setting} ({limit} bytes)"
        await JSONResponse({"detail": msg}, status_code=422)(scope, receive, send)


class _TooLarge(Exception):
    pass


class Timing:
    """ASGI middleware: latency histogram and request counter by route template + status."""

    def __init__(self, app, metrics: ServingMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(endpoint, status, time.perf_counter() - t0)


NON_FINITE_MSG = (
    "NaN, Infinity and -Infinity are not JSON numbers (RFC 8259): send finite numbers only"
)


def _reject_constant(name: str) -> None:
    raise ValueError(name)


def check_finite_json(body: bytes) -> None:
    """Raise a 422 (RequestValidationError) when a JSON body holds NaN or +-Infinity.

    Python's JSON parser accepts these tokens, and a validation error that echoes one
    cannot be encoded (500). A byte scan keeps the common case to one `in` per token;
    only a body that mentions one is parsed again, so an id containing "NaN" passes."""
    if b"NaN" not in body and b"Infinity" not in body:
        return
    try:
        json.loads(body, parse_constant=_reject_constant)
    except ValueError as exc:
        if str(exc) in ("NaN", "Infinity", "-Infinity"):
            error = {"type": "finite_number", "loc": ("body",), "msg": f"{exc}: {NON_FINITE_MSG}"}
            raise RequestValidationError([error]) from None
        # Any other parse error is FastAPI's to report, as usual.


class FiniteJSONRoute(APIRoute):
    """An APIRoute whose JSON bodies must be standard JSON (no NaN/Infinity tokens)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            if request.method in ("POST", "PUT", "PATCH"):
                check_finite_json(await request.body())  # cached for the handler
            return await handler(request)

        return route


def _encodable(value: Any) -> Any:
    """JSON-safe copy of an error detail: non-finite floats become their names ('nan',
    'inf'; also what an overflowing literal such as 1e999 parses to) and text that UTF-8
    cannot encode (a lone surrogate such as "\\ud800") gets its bad code points escaped."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    return value


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body, with every echoed value made encodable."""
    return JSONResponse({"detail": _encodable(jsonable_encoder(exc.errors()))}, status_code=422)


def _items(served: Served) -> list[dict[str, Any]]:
    retrieval = served.retrieval_scores
    return [
        {
            "item_id": item_id,
            "position": pos,
            "score": float(served.scores[pos]),
            "retrieval_score": None if retrieval is None else float(retrieval[pos]),
            "propensity": float(served.propensities[pos]),
            "explored": bool(served.explored[pos]) if served.explored is not None else False,
        }
        for pos, item_id in enumerate(served.item_ids)
    ]


def create_app(
    params: Params,
    *,
    root: str | None = None,
    holder: BundleHolder | None = None,
    impressions: ImpressionLog | None = None,
    events: EventLog | None = None,
) -> FastAPI:
    """The app over the live bundle of `root` (default params.bundle.root).

    The watcher starts with the app (lifespan) and stops with it; the impressions and
    events logs are flushed on shutdown. Lists served within the events' lateness window
    are read back from the impressions log at start, so a restarted server still takes
    their events."""
    s = params.serving
    fb = params.feedback
    metrics = ServingMetrics()
    holder = holder or BundleHolder(
        params,
        root,
        on_swap=lambda sb: (metrics.swaps.inc(), metrics.set_live_bundle(sb.bundle_id, sb.canary)),
        on_refused=lambda _bid, _exc: metrics.load_failures.inc(),
        on_canary=metrics.set_canary,
    )
    impressions = impressions or ImpressionLog(
        s.impressions_dir,
        s.impressions_rotate_rows,
        endpoint_url=params.storage.s3_endpoint_url,
        flush_seconds=s.impressions_flush_seconds,
        wal_dir=wal_dir(params),
        fsync_ms=s.impressions_fsync_ms,
    )
    events = events or EventLog(
        events_dir(params),
        fb.events_rotate_rows,
        endpoint_url=params.storage.s3_endpoint_url,
        flush_seconds=fb.events_flush_seconds,
        wal_dir=events_wal_dir(params),
        fsync_ms=fb.events_fsync_ms,
    )
    served_lists = ServedLists(fb.lateness_seconds, fb.max_tracked_lists)
    bandit = _bandit(params)
    sections: dict[str, np.ndarray] = {}  # bundle id -> the bandit's rows of its cold items
    replay_lock = threading.Lock()
    replayed = threading.Event()

    def bandit_ready() -> None:
        # The posterior is rebuilt from the logs once, when the bandit is first needed
        # (never while a bundle serves from the start).
        if bandit is None or replayed.is_set():
            return
        with replay_lock:
            if not replayed.is_set():
                _replay_bandit(bandit, params, impressions.directory, events.directory)
                replayed.set()

    try:
        served_lists.load(impressions.directory, endpoint_url=params.storage.s3_endpoint_url)
    except Exception:  # noqa: BLE001 - serving starts; only older lists' events are refused
        log.exception("could not read recent lists back from %s", impressions.directory)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        _set_threads(s.threads)
        holder.start()
        try:
            yield
        finally:
            holder.stop()
            impressions.close()
            events.close()

    # Swagger UI and ReDoc from the fastapi-offline package's own files (no CDN).
    app = FastAPIOffline(title="Shortlist", version="1", lifespan=lifespan)
    app.router.route_class = FiniteJSONRoute
    app.add_exception_handler(RequestValidationError, validation_error)
    app.state.holder = holder
    app.state.impressions = impressions
    app.state.metrics = metrics
    app.state.events = events
    app.state.served_lists = served_lists
    app.state.bandit = bandit
    metrics.watch_impressions(impressions)
    metrics.watch_events(events, served_lists)
    app.add_middleware(
        BodyLimit,
        limit=s.max_body_bytes,
        per_path={"/events/batch": (fb.max_batch_bytes, "feedback.max_batch_bytes")},
    )
    app.add_middleware(Timing, metrics=metrics)  # added last = outermost: sees every 422

    def live() -> ServingBundle:
        sb = holder.current  # read ONCE: this request is served by this bundle
        if sb is None:
            raise HTTPException(503, "no bundle loaded yet" + _why(holder))
        return sb

    def check_k(k: int) -> None:
        if not 1 <= k <= s.max_k:
            raise HTTPException(422, f"k must be between 1 and {s.max_k} (serving.max_k), got {k}")

    def log_served(
        request_id, endpoint, user_id, bundle_id: str, served: Served, served_at: float
    ) -> None:
        impressions.append(
            request_id=request_id,
            endpoint=endpoint,
            user_id=user_id,
            bundle_id=bundle_id,
            item_ids=served.item_ids,
            scores=served.scores.tolist(),
            retrieval_scores=None
            if served.retrieval_scores is None
            else served.retrieval_scores.tolist(),
            propensities=served.propensities.tolist(),
            policy=served.policy,
            strategy=served.strategy,
            explored=None if served.explored is None else served.explored.tolist(),
            exploration_cost=served.exploration_cost,
        )
        metrics.impression_rows.inc(len(served.item_ids))
        explored = 0 if served.explored is None else int(served.explored.sum())
        metrics.observe_list(explored, served.exploration_cost)
        if served.item_ids:
            served_lists.add(request_id, served_at, list(served.item_ids))

    @app.post("/recommend", response_model=RecommendResponse)
    def post_recommend(req: RecommendRequest) -> dict[str, Any]:
        check_k(req.k)
        request_id = uuid.uuid4().hex
        served_at = time.time()
        sb = holder.current  # read ONCE: this request is served by this bundle
        if sb is None and bandit is not None:
            bandit_ready()
            served, bundle_id = _from_bandit(bandit, request_id, req), bandit_mod.BUNDLE_ID
            metrics.bandit_lists.inc()
        else:
            sb = live()
            served = recommend(
                sb, req, params, np.random.default_rng(), now=served_at, explore=True
            )
            if bandit is not None and params.serving.bandit.cold_section:
                served = _cold_section(bandit, sb, served, request_id, req, params, sections)
            bundle_id = sb.bundle_id
        log_served(request_id, "/recommend", req.user_id, bundle_id, served, served_at)
        return {
            "request_id": request_id,
            "bundle_id": bundle_id,
            "user_id": req.user_id,
            "served_at": served_at,
            "strategy": served.strategy,
            "policy": served.policy,
            "exploration_cost": served.exploration_cost,
            "items": _items(served),
        }

    @app.get("/similar-items/{item_id}", response_model=SimilarItemsResponse)
    def get_similar(
        item_id: Annotated[str, Path(pattern=ID_PATTERN)],
        k: Annotated[int, Query()] = 20,
    ) -> dict[str, Any]:
        check_k(k)
        sb = live()
        if item_id not in sb.row_of:
            raise HTTPException(404, f"item {item_id!r} is not in bundle {sb.bundle_id}")
        request_id = uuid.uuid4().hex
        served = similar_items(sb, item_id, k, params, np.random.default_rng())
        log_served(request_id, "/similar-items", None, sb.bundle_id, served, time.time())
        return {
            "request_id": request_id,
            "bundle_id": sb.bundle_id,
            "item_id": item_id,
            "policy": served.policy,
            "items": _items(served),
        }

    def accept(batch: list[Event], single: bool) -> Any:
        if len(batch) > fb.max_batch_events:
            raise HTTPException(
                422,
                f"a batch holds at most {fb.max_batch_events} events "
                f"(feedback.max_batch_events), got {len(batch)}",
            )
        try:
            rows = check_events(
                batch, served_lists, lateness_seconds=fb.lateness_seconds, now=time.time()
            )
            events.append(rows)
        except EventsRefused as exc:
            bad = {p.index for p in exc.problems}
            for p in exc.problems:
                metrics.events_rejected.labels(p.reason).inc()
            if exc.size > len(bad):
                metrics.events_rejected.labels("in_refused_batch").inc(exc.size - len(bad))
            reason = exc.problems[0].reason
            status = 404 if single and reason == UNKNOWN_REQUEST else 422
            body = {
                "detail": str(exc),
                "reason": reason,
                "problems": [p.to_dict() for p in exc.problems],
            }
            return JSONResponse(_encodable(body), status_code=status)
        except EventLogUnavailable as exc:
            metrics.events_rejected.labels("unavailable").inc(len(batch))
            return JSONResponse({"detail": f"{exc}; not accepted, retry"}, status_code=503)
        if holder.current is None:
            bandit_ready()
        for row in rows:
            kind = row["kind"] if row["kind"] in BUILTIN_KINDS else "custom"
            metrics.events.labels(kind).inc()
            if bandit is not None and bandit.update(
                row["request_id"], row["item_id"], bandit_mod.is_positive(row["kind"], row["value"])
            ):
                metrics.bandit_successes.inc()
        return {"accepted": len(rows), "event_ids": [r["event_id"] for r in rows]}

    @app.post("/events", response_model=EventsAccepted)
    def post_event(event: Event) -> Any:
        return accept([event], single=True)

    @app.post("/events/batch", response_model=EventsAccepted)
    def post_events(batch: EventBatch) -> Any:
        return accept(batch.events, single=False)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        sb = holder.current
        if sb is None and bandit is not None and holder.polled and not holder.live_named:
            # A new system: nothing was ever promoted, the bandit is what serves.
            return JSONResponse({"ready": True, "bundle_id": None, "serving": "bandit"})
        if sb is None:
            return JSONResponse({"ready": False, "detail": "no bundle loaded" + _why(holder)}, 503)
        return JSONResponse({"ready": True, "bundle_id": sb.bundle_id})

    @app.get("/version")
    def version() -> dict[str, Any]:
        sb = live()
        return {
            "bundle_id": sb.bundle_id,
            "location": sb.location,
            "loaded_at": sb.loaded_at,
            "items": sb.n_items,
            "swaps": holder.swaps,
            "last_error": holder.last_error,
        }

    @app.get("/metrics")
    def get_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _bandit(params: Params) -> bandit_mod.ThompsonBandit | None:
    """The bandit that serves /recommend while no bundle is live (None when it is off or
    there is no catalog to serve)."""
    b = params.serving.bandit
    if not b.enabled:
        return None
    directory = b.catalog_dir or params.data.dir
    if is_remote(directory):
        log.warning("serving.bandit: %s is remote; no bandit (a local catalog is read)", directory)
        return None
    try:
        return bandit_mod.ThompsonBandit.from_catalog(
            directory,
            prior_strength=b.prior_strength,
            base_rate=b.base_rate,
            pool=b.pool,
            draws=b.draws,
            max_tracked_lists=params.feedback.max_tracked_lists,
        )
    except Exception:  # noqa: BLE001 - serving starts; without a bundle it answers 503
        log.exception("serving.bandit: could not read the catalog in %s", directory)
        return None


def _replay_bandit(
    bandit: bandit_mod.ThompsonBandit, params: Params, impressions_dir: str, events_dir_: str
) -> None:
    """Rebuild the posterior from the lists the bandit served before (impressions named
    `bandit`) and their events, so a restart keeps what it learned."""
    try:
        endpoint = params.storage.s3_endpoint_url
        columns = ["request_id", "item_id", "bundle_id"]
        shown = _read_log(impressions_dir, "impressions", columns, endpoint)
        shown = shown[shown["bundle_id"] == bandit_mod.BUNDLE_ID]
        if len(shown):
            columns = ["request_id", "item_id", "kind", "value"]
            events = _read_log(events_dir_, "events", columns, endpoint)
            events = events[events["request_id"].isin(set(shown["request_id"]))]
            credited = bandit.replay(shown, events)
            log.info("bandit: %d shown items and %d successes replayed", len(shown), credited)
    except Exception:  # noqa: BLE001 - it serves from its priors instead
        log.exception("bandit: could not replay its logged lists; serving from the priors")


def _read_log(directory: str, prefix: str, columns: list[str], endpoint: str | None):
    """Every row of a log directory's Parquet files (named `<prefix>-...`), these columns."""
    import io

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shortlist.storage import open_store

    store = open_store(directory, endpoint_url=endpoint)
    keys = [k for k in store.list() if "/" not in k and k.startswith(prefix + "-")]
    tables = [
        pq.read_table(io.BytesIO(store.read_bytes(k)), columns=columns)
        for k in keys
        if k.endswith(".parquet")
    ]
    if not tables:
        return pd.DataFrame({c: [] for c in columns})
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def _cold_section(
    bandit: bandit_mod.ThompsonBandit,
    sb: Any,
    served: Served,
    request_id: str,
    req: Any,
    params: Params,
    sections: dict[str, np.ndarray],
) -> Served:
    """The list with its deepest exploration slot showing a Thompson draw over the live
    bundle's items without interactions (`shortlist.serving.bandit`), when the list has an
    exploration slot and its cold share has room for one more cold item; else unchanged.

    That position's propensity is the bandit's Monte Carlo estimate, its score and
    retrieval score the item's posterior mean; the list's expected cost stays the slot
    policy's (the item the slot would have drawn is not the one shown)."""
    if sb.cold is None or served.explored is None or not served.explored.any():
        return served
    pos = int(np.flatnonzero(served.explored)[-1])
    rows = np.asarray(served.rows, dtype=np.int64)
    others = np.delete(rows, pos)
    room = cold_slots(req.k, params.serving.max_cold_share) - int(sb.cold[others].sum())
    if room < 1:
        return served
    section = sections.get(sb.bundle_id)
    if section is None:
        cold_ids = np.asarray(sb.bundle.item_ids)[sb.cold]
        section = sections.setdefault(sb.bundle_id, bandit.section(cold_ids))
    exclude = set(served.item_ids) | set(req.exclude_items or ())
    if req.exclude_seen:  # (cold items have no interactions: no user has seen one yet)
        exclude |= set(req.recent_items or ())
    genres = set(req.genres) if req.genres else None
    got = bandit.recommend(request_id, 1, np.random.default_rng(), exclude, genres, section)
    if not got.item_ids or got.item_ids[0] not in sb.row_of:
        return served
    item = got.item_ids[0]
    item_ids = list(served.item_ids)
    item_ids[pos] = item
    rows = rows.copy()
    rows[pos] = sb.row_of[item]
    scores = np.asarray(served.scores, dtype=np.float64).copy()
    scores[pos] = got.means[0]
    retrieval = None
    if served.retrieval_scores is not None:
        retrieval = np.asarray(served.retrieval_scores, dtype=np.float64).copy()
        retrieval[pos] = got.means[0]
    prop = np.asarray(served.propensities, dtype=np.float64).copy()
    prop[pos] = got.propensities[0]
    return Served(
        served.strategy,
        served.policy,
        rows,
        scores,
        retrieval,
        prop,
        item_ids,
        served.explored,
        served.exploration_cost,
    )


def _from_bandit(bandit: bandit_mod.ThompsonBandit, request_id: str, req) -> Served:
    """One list from the bandit: the request's excluded and recent items are left out, and
    its genre filter applies as for a bundle."""
    exclude = set(req.exclude_items or ())
    if req.exclude_seen:
        exclude |= set(req.recent_items or ())
    genres = set(req.genres) if req.genres else None
    got = bandit.recommend(request_id, req.k, np.random.default_rng(), exclude, genres)
    n = len(got.item_ids)
    return Served(
        "bandit",
        bandit_mod.POLICY,
        got.rows,
        got.means,
        None,
        got.propensities,
        got.item_ids,
        np.zeros(n, dtype=bool),
        0.0,
    )


def wal_dir(params: Params) -> str:
    """serving.impressions_wal_dir, else beside local impressions, else under work_dir."""
    s = params.serving
    if s.impressions_wal_dir:
        return s.impressions_wal_dir
    if is_remote(s.impressions_dir):
        return os.path.join(params.project.work_dir, "impressions-wal")
    return os.path.join(s.impressions_dir, ".wal")


def events_wal_dir(params: Params) -> str:
    """feedback.events_wal_dir, else inside local events, else under work_dir."""
    fb = params.feedback
    if fb.events_wal_dir:
        return fb.events_wal_dir
    where = events_dir(params)
    if is_remote(where):
        return os.path.join(params.project.work_dir, "events-wal")
    return os.path.join(where, ".wal")


def _why(holder: BundleHolder) -> str:
    return f" ({holder.last_error})" if holder.last_error else ""


def _set_threads(n: int) -> None:
    # One query per request: intra-op parallelism only makes concurrent requests contend.
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def serve(
    params: Params, *, root: str | None = None, host: str | None = None, port: int | None = None
) -> None:
    """Run the API with uvicorn on host:port (defaults from params.serving) until stopped."""
    import uvicorn

    s = params.serving
    logging.basicConfig(
        level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(params, root=root)
    uvicorn.run(
        app,
        host=host or s.host,
        port=port or s.port,
        log_level=s.log_level,
        access_log=False,  # every request is already counted in /metrics and the impressions
        workers=1,
    )
