"""Tiny real models for bundle tests on the shared tiny dataset: towers with fixed init,
and `Shop`: an artifact root driven through the real `shortlist` command line and real
`shortlist serve` processes (the fault-injection tests use it).

The towers are initialised but not trained (seeded, so deterministic): the bundle and
canary contracts (checksums, fingerprints, ANN vs exact, serving vs model) do not depend
on model quality, and building one takes a second instead of minutes of training.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shortlist.config import Params


def small_params(params: Params) -> Params:
    return params.with_overrides(
        {
            "towers.embedding_dim": 16,
            "towers.hidden_dim": 32,
            "towers.history_len": 20,
            "towers.title_hash_buckets": 256,
            "canary.users": 100,
            "index.embed_batch_size": 500,
        }
    )


def make_towers(
    params: Params, data_dir: str, out: Path, seed: int = 0, meta: dict | None = None
) -> str:
    """Save an untrained (seeded) TwoTowerRetriever fitted on the dataset's vocabularies
    (`meta` adds to its metadata, e.g. an inference popularity term)."""
    import torch

    from shortlist.data.io import read_dataset
    from shortlist.models.features import FeatureState
    from shortlist.models.fit import model_config
    from shortlist.models.two_tower import TwoTowerRetriever, build_net

    ds = read_dataset(data_dir)
    torch.manual_seed(seed)
    tp = params.towers
    # the last 5% of items are left out of the vocabulary: cold items must still embed
    warm_items = ds.items["item_id"].iloc[: int(len(ds.items) * 0.95)]
    train = ds.interactions[ds.interactions["item_id"].isin(set(warm_items))]
    state = FeatureState.fit(
        train,
        ds.items,
        ds.users,
        title_hash_buckets=tp.title_hash_buckets,
        user_buckets=tp.user_buckets,
    )
    config = model_config(tp)
    net = build_net(state, config, ds.items)
    TwoTowerRetriever(
        net, state, config, ds.items, meta={"mlflow_run_id": f"run-{seed}", **(meta or {})}
    ).save(str(out))
    return str(out)


# --------------------------------------------------------------------------- real processes


@dataclass
class Shop:
    """An artifact root driven through the real `shortlist` command line.

    `params_file` holds the small-towers params with every path under `work`; `models` are
    two seeded towers directories; `data` the shared tiny dataset directory."""

    work: Path
    params_file: Path
    root: str
    data: str
    models: list[str]

    def cli(self, *args: str, check: bool | None = None, timeout: float = 600):
        """Run `python -m shortlist ARGS --params ...`; check=True asserts exit 0, False
        asserts non-zero. Returns the CompletedProcess (text)."""
        cmd = [sys.executable, "-m", "shortlist", *args, "--params", str(self.params_file)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=self.work
        )
        if check is True:
            assert proc.returncode == 0, f"{args}: {proc.stderr[-2000:]}"
        elif check is False:
            assert proc.returncode != 0, f"{args} should have failed: {proc.stdout[-2000:]}"
        return proc

    def params(self) -> Params:
        from shortlist.config import load_params

        return load_params(self.params_file)

    def set(self, overrides: dict) -> None:
        """Rewrite the params file with `overrides` applied (the CLI reads it each call)."""
        import yaml

        params = self.params().with_overrides(overrides)
        self.params_file.write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))

    def pointer(self) -> dict:
        import json

        return json.loads((Path(self.root) / "live.json").read_text())

    def serve(self, name: str = "server") -> Server:
        """Start a real `shortlist serve` on a free port (stop it with .stop())."""
        from shortlist.serving.loadgen import free_port

        port = free_port()
        log = self.work / f"{name}-{port}.log"
        cmd = [sys.executable, "-m", "shortlist", "serve", "--params", str(self.params_file)]
        cmd += ["--root", self.root, "--port", str(port)]
        fh = open(log, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        fh.close()
        return Server(proc, f"http://127.0.0.1:{port}", log)


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def get(self, path: str, timeout: float = 10.0):
        import httpx

        return httpx.get(self.url + path, timeout=timeout)

    def post(self, path: str, body: dict, timeout: float = 10.0):
        import httpx

        return httpx.post(self.url + path, json=body, timeout=timeout)

    def wait_up(self, timeout: float = 180.0) -> None:
        """Until /health answers (the process serves HTTP; it may not be ready)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.url} not up: {self.log.read_text()[-3000:]}")

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.url}: {what} not within {timeout}s; {self.log.read_text()[-2000:]}"
        )

    def serving(self) -> str | None:
        resp = self.get("/ready")
        return resp.json().get("bundle_id") if resp.status_code == 200 else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def shop_params(params: Params, work: Path) -> Params:
    """Small towers, every path under `work`, fast polling for the serving processes, and a
    serving history window short enough that many users of the tiny dataset exceed it."""
    return small_params(params).with_overrides(
        {
            "bundle.history_len": 30,
            "project.work_dir": str(work),
            "bundle.root": str(work / "bundles"),
            "bundle.staging_dir": str(work / "staging"),
            "bundle.cache_dir": str(work / "bundle-cache"),
            "serving.impressions_dir": str(work / "impressions"),
            "serving.poll_seconds": 0.1,
            "serving.threads": 1,
            "mlflow.tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        }
    )


def make_shop(template: Path, work: Path) -> Shop:
    """A copy of a template root where bundle A (seed 0) is live and bundle B (seed 1)
    sits in the idle slot with a passed canary, all made through the CLI. The template is
    built once per test session and copied, so each test starts from the same state."""
    import shutil

    from shortlist.config import load_params
    from tests.conftest import REPO, write_tiny_dataset

    if not (template / "ready").exists():
        shutil.rmtree(template, ignore_errors=True)
        template.mkdir(parents=True)
        data = write_tiny_dataset(template / "data")
        base = shop_params(load_params(REPO / "params.yaml"), template)
        models = [make_towers(base, data, template / f"model{s}", seed=s) for s in (0, 1)]
        shop = _shop(template, base, data, models)
        shop.cli("build-bundle", models[0], "--data", data, "--root", shop.root, check=True)
        shop.cli("canary", "--root", shop.root, check=True)
        shop.cli("promote", "--root", shop.root, check=True)
        shop.cli("build-bundle", models[1], "--data", data, "--root", shop.root, check=True)
        shop.cli("canary", "--root", shop.root, check=True)
        (template / "ready").write_text("ok")
    shutil.copytree(template / "bundles", work / "bundles")
    base = shop_params(load_params(REPO / "params.yaml"), work)
    data = str(template / "data")
    return _shop(work, base, data, [str(template / f"model{s}") for s in (0, 1)])


def _shop(work: Path, params: Params, data: str, models: list[str]) -> Shop:
    import yaml

    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
    return Shop(work, params_file, params.bundle.root, data, models)
