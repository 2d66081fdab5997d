"""Request guards of the serving API: body size limit, latency metrics, finite JSON, and
422 bodies that always encode.

ASGI middleware and a route class, kept apart from the endpoints in `shortlist.serving.app`
so each can be read and tested on its own.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from shortlist.serving.metrics import ServingMetrics


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


def encodable(value: Any) -> Any:
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
        return {encodable(k): encodable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encodable(v) for v in value]
    return value


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body, with every echoed value made encodable."""
    return JSONResponse({"detail": encodable(jsonable_encoder(exc.errors()))}, status_code=422)
