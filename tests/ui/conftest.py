"""The local stack (`shortlist.stack`: MLflow, Airflow standalone, the serving API) on
free ports in a temporary work dir, started once for the browser tests, and Chromium.

The stack runs the real DAGs with small training settings (few epochs, one thread, one
baseline) on ml-100k, so a whole retrain run takes minutes, not an hour. MLflow runs
with its basic-auth app, as `make up` starts it: the browser signs in as the reviewer
(HTTP credentials on its pages), the tests' MLflow client as the pipeline's service account.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shortlist.config import Params, load_params
from tests.servers import free_ports
from tests.ui.browser import Shots, chromium_path, launch

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / ".shortlist" / "test-artifacts" / "ui"
MODEL = "shortlist-bundle-ui"

SMALL = {
    "towers.epochs": 2,
    "towers.history_len": 20,
    "towers.threads": 1,
    "towers.refit_on_validation": False,
    "ranker.threads": 1,
    "ranker.epochs": 1,
    "evaluation.baselines": ["most_popular"],
    "canary.users": 100,
    "promotion.registered_model": MODEL,
    # Not shorter: a reschedule-mode sensor poked every 2 s on a busy host raced the
    # executor's report of its previous poke, and the scheduler failed the task.
    "promotion.poll_seconds": 10,
    "serving.poll_seconds": 1,
}


@dataclass
class LocalStack:
    params: Params
    params_file: Path
    urls: dict[str, str]
    airflow_password: str
    mlflow_accounts: dict[str, tuple[str, str]]

    def mlflow_page(self, browser: Any, **kwargs: Any) -> Any:
        """A browser page signed in to MLflow as the reviewer (HTTP basic credentials)."""
        username, password = self.mlflow_accounts["reviewer"]
        return browser.new_page(
            http_credentials={"username": username, "password": password}, **kwargs
        )

    def airflow_api(self) -> httpx.Client:
        """An Airflow REST client logged in as the stack's admin (JWT from /auth/token)."""
        token = httpx.post(
            f"{self.urls['airflow']}/auth/token",
            json={"username": "admin", "password": self.airflow_password},
            timeout=60,
        )
        token.raise_for_status()
        return httpx.Client(
            base_url=f"{self.urls['airflow']}/api/v2",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
            timeout=60,
        )

    def mlflow_client(self) -> Any:
        """An MLflow client as the pipeline's service account (the module's environment
        carries its credentials: MLflow's client reads them from there)."""
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.urls["mlflow"])


def airflow_login(page: Any, stack: LocalStack) -> None:
    """Sign in on the Airflow UI's login form (simple auth manager)."""
    page.goto(stack.urls["airflow"] + "/", wait_until="load")
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill(stack.airflow_password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Admin").wait_for(timeout=120_000)


@pytest.fixture(scope="module")
def local_stack(
    tmp_path_factory: pytest.TempPathFactory, ml100k_path: Path
) -> Iterator[LocalStack]:
    from pipelines import ingest
    from shortlist import stack
    from shortlist.demo import absolute_paths

    if chromium_path() is None:
        pytest.skip("chromium is not installed (`.ci/run` installs Debian's package)")
    tmp = tmp_path_factory.mktemp("ui-stack")
    params = absolute_paths(load_params(REPO / "params.yaml"), tmp).with_overrides(
        {**SMALL, "data.path": str(ml100k_path)}
    )
    params = params.with_overrides(
        {"mlflow.tracking_uri": f"sqlite:///{tmp / '.shortlist' / 'mlflow.db'}"}
    )
    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
    ingest.run(params, source="movielens-100k", path=str(ml100k_path), out_dir=params.data.dir)
    m, a, api = free_ports(3)
    before = Path.cwd()
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {k: os.environ.get(k) for k in names}
    os.chdir(REPO)  # the stack takes the DAGs folder from the project directory
    try:  # stopped whatever happens, also when start-up itself fails or is interrupted
        urls = stack.up(
            params,
            {"mlflow": m, "airflow": a, "api": api},
            wait_s=600,
            params_file=params_file,
            started_by="tests/ui",
        )
        os.chdir(before)
        password = stack.airflow_password(params)
        assert password, "Airflow wrote no admin password"
        accounts = stack.mlflow_accounts(params)
        os.environ.update(dict(zip(names, accounts["pipeline"], strict=True)))
        yield LocalStack(params, params_file, urls, password, accounts)
    finally:
        os.chdir(before)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stack.down(params)


@pytest.fixture(scope="module")
def browser(local_stack: LocalStack) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = launch(pw, chromium_path())
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Iterator[Shots]:
    """Screenshots of the test's steps; kept in .shortlist/test-artifacts/ui/<test>/
    only when the test fails. SHORTLIST_SCREENSHOTS=DIR also publishes the README's."""
    folder = ARTIFACTS / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    publish = os.environ.get("SHORTLIST_SCREENSHOTS")
    recorder = Shots(folder, Path(publish) if publish else None)
    started = time.monotonic()
    yield recorder
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(f"\nscreenshots of the failed steps: {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\n{request.node.name}: {time.monotonic() - started:.0f} s wall time")
