"""Bad input against a real `shortlist serve` process: 422 with the rule, never a 500.

Reproductions: NaN or Infinity anywhere in a `/recommend` body used to be a 500 (the 422
handler could not encode the echoed value); `/docs` used to load Swagger UI from a CDN
(a blank page offline)."""

from __future__ import annotations

import re
import signal

import httpx
import pytest

from tests.servers import stop
from tests.serving.conftest import live_root, start_serve, world  # noqa: F401

pytestmark = pytest.mark.slow  # trains the serving fixtures' models


@pytest.fixture
def server(world, live_root, tmp_path):  # noqa: F811
    root, _a, _b = live_root
    params = world.params.with_overrides({"serving.impressions_dir": str(tmp_path / "imp")})
    proc = start_serve(params, root, tmp_path / "serve")
    yield proc
    stop(proc.proc, signal.SIGTERM)


BODIES = [
    b'{"user_id": "u1", "k": NaN}',
    b'{"user_id": "u1", "k": Infinity}',
    b'{"user_id": "u1", "k": -Infinity}',
    b'{"user_id": "u1", "k": 5, "exclude_seen": NaN}',
    b'{"recent_items": [NaN, "i1"]}',
    b'{"user_id": "u1", "extra": {"deep": [1, 2, Infinity]}}',
    b'{"user_id": "u1", "genres": [NaN]}',
]


def test_non_finite_numbers_anywhere_are_422_naming_the_rule(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for raw in BODIES:
            resp = client.post(
                "/recommend", content=raw, headers={"content-type": "application/json"}
            )
            assert resp.status_code == 422, (raw, resp.status_code, resp.text)
            assert "not JSON numbers (RFC 8259)" in resp.text, raw
        ok = client.post("/recommend", json={"user_id": "u1", "k": 3})
        assert ok.status_code == 200  # the server is unharmed
        metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics


def test_values_the_error_body_cannot_echo_verbatim_are_422(server):
    # 1e999 parses to inf; a lone surrogate cannot be encoded as UTF-8. Both were 500s.
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for raw in (b'{"user_id": "u1", "k": 1e999}', b'{"user_id": "\\ud800"}'):
            resp = client.post(
                "/recommend", content=raw, headers={"content-type": "application/json"}
            )
            assert resp.status_code == 422, (raw, resp.text)


def test_docs_load_with_no_network_beyond_the_server(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page).text
            refs = re.findall(r'(?:src|href|spec-url)\s*=\s*["\']([^"\']+)["\']', html)
            refs += re.findall(r'url:\s*["\']([^"\']+)["\']', html)
            assert refs and all(r.startswith("/") for r in refs), (page, refs)
            for ref in refs:
                resp = client.get(ref)
                assert resp.status_code == 200 and resp.content, ref
