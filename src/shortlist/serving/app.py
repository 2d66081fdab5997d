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
saying what is wrong; an error that echoes a value never fails to encode (the guards:
`shortlist.serving.guards`; the bandit's lists: `shortlist.serving.bandit_lists`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline

from shortlist.config import Params
from shortlist.serving import bandit as bandit_mod
from shortlist.serving.bandit_lists import (
    bandit_from_params,
    from_bandit,
    replay_bandit,
    with_cold_section,
)
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
from shortlist.serving.guards import (
    BodyLimit,
    FiniteJSONRoute,
    Timing,
    encodable,
    validation_error,
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
    bandit = bandit_from_params(params)
    sections: dict[str, np.ndarray] = {}  # bundle id -> the bandit's rows of its cold items
    replay_lock = threading.Lock()
    replayed = threading.Event()

    def bandit_ready() -> None:
        # The posterior is rebuilt from the logs once: when the bandit first serves a
        # whole list, or at start when it serves bundles' cold sections (`lifespan`).
        if bandit is None or replayed.is_set():
            return
        with replay_lock:
            if not replayed.is_set():
                replay_bandit(bandit, params, impressions.directory, events.directory)
                replayed.set()

    try:
        served_lists.load(impressions.directory, endpoint_url=params.storage.s3_endpoint_url)
    except Exception:  # noqa: BLE001 - serving starts; only older lists' events are refused
        log.exception("could not read recent lists back from %s", impressions.directory)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        _set_threads(s.threads)
        holder.start()
        if bandit is not None and s.bandit.cold_section:
            # Off the request path; /ready waits for it, and until it is done no list
            # gets a cold-section draw.
            threading.Thread(target=bandit_ready, name="bandit-replay", daemon=True).start()
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
    app.state.bandit_replayed = replayed
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
            bandit_position=served.bandit_position,
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
            served, bundle_id = from_bandit(bandit, request_id, req), bandit_mod.BUNDLE_ID
            metrics.bandit_lists.inc()
        else:
            sb = live()
            served = recommend(
                sb, req, params, np.random.default_rng(), now=served_at, explore=True
            )
            if bandit is not None and s.bandit.cold_section and replayed.is_set():
                served = with_cold_section(bandit, sb, served, request_id, req, params, sections)
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
            return JSONResponse(encodable(body), status_code=status)
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
        if bandit is not None and s.bandit.cold_section and not replayed.is_set():
            detail = "replaying the bandit's logged draws (serving.bandit.cold_section)"
            return JSONResponse({"ready": False, "detail": detail}, 503)
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
