"""Property-based fuzzing of the serving API from its own OpenAPI schema (Schemathesis).

Schemathesis reads `/openapi.json` from a real `shortlist serve` process over a real
bundle and sends generated requests, valid and invalid (wrong types, out-of-range
values, odd strings, missing and extra fields), to every operation. The property: no
input is answered with a 5xx.
"""

from __future__ import annotations

import re
import signal

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.servers import stop
from tests.serving.conftest import copy_live_root, start_serve, world  # noqa: F401


@pytest.fixture(scope="module")
def api_schema(world, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("fuzz")
    root, _a, _b = copy_live_root(world, work / "bundles")
    params = world.params.with_overrides({"serving.impressions_dir": str(work / "imp")})
    server = start_serve(params, root, work / "serve")
    yield schemathesis.openapi.from_url(server.url + "/openapi.json"), server.url
    stop(server.proc, signal.SIGTERM)


# Examples per operation and generation mode; POST /recommend, the richest body, gets more.
EXAMPLES = {"POST /recommend": 80}
DEFAULT_EXAMPLES = 25


def _fuzz(operation, mode: GenerationMode) -> None:
    name = f"{operation.method.upper()} {operation.path}"

    @settings(
        max_examples=EXAMPLES.get(name, DEFAULT_EXAMPLES),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    run()


@pytest.mark.slow
def test_no_generated_input_gets_a_server_error(api_schema):
    schema, url = api_schema
    # (schemathesis.pytest.parametrize is not used: its lazy loader needs a pytest
    # internal that pytest 9 removed, so the operations are walked here.)
    operations = [result.ok() for result in schema.get_all_operations()]
    names = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {"POST /recommend", "GET /similar-items/{item_id}", "GET /ready"} <= names
    for operation in operations:
        _fuzz(operation, GenerationMode.POSITIVE)
        if operation.body or any(True for _ in operation.iter_parameters()):
            _fuzz(operation, GenerationMode.NEGATIVE)

    # The run really sent both kinds of input, and the server's own count has no 5xx.
    metrics = httpx.get(url + "/metrics", timeout=10).text
    for status in ("200", "422"):
        assert f'shortlist_requests_total{{endpoint="/recommend",status="{status}"}}' in metrics
    errors = re.findall(r'requests_total\{(endpoint="[^"]*",status="5\d\d")\}', metrics)
    # /ready answers 503 while start_serve waits for the bundle to load: not an error.
    assert set(errors) <= {'endpoint="/ready",status="503"'}, errors
