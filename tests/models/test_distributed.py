"""Data-parallel towers training: the shards, the rank bookkeeping, replicas kept in step
by DDP, and `train_towers` launching two processes under torchrun on the tiny dataset."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from shortlist.models.distributed import global_batches, resolve_backend, setup, shard
from tests.models.test_two_tower import tiny_data


@pytest.mark.parametrize(
    ("n", "batch_size", "world"),
    [(1000, 64, 2), (1024, 64, 2), (1001, 100, 3), (131, 64, 2), (7, 4, 2), (1, 4, 1)],
)
def test_each_example_is_on_exactly_one_rank_per_epoch(n, batch_size, world):
    perm = np.random.default_rng(n).permutation(n)
    batches = global_batches(n, batch_size, world)
    seen = np.zeros(n, dtype=int)
    for s, stop in batches:
        parts = [shard(perm[s:stop], r, world) for r in range(world)]
        sizes = [len(p) for p in parts]
        assert min(sizes) >= 2 and max(sizes) - min(sizes) <= 1
        for p in parts:
            seen[p] += 1
        assert sorted(np.concatenate(parts)) == sorted(perm[s:stop])
    kept = np.zeros(n, dtype=bool)
    for s, stop in batches:
        kept[perm[s:stop]] = True
    assert set(np.unique(seen[kept])) <= {1} and not seen[~kept].any()
    # Only a tail batch too short for two rows per rank is left out.
    assert (~kept).sum() == (n % batch_size if 0 < n % batch_size < 2 * world else 0)


def test_one_process_takes_the_batches_it_always_took():
    for n in (0, 1, 2, 129, 130, 1000):
        old = [(s, min(n, s + 64)) for s in range(0, n, 64) if min(n, s + 64) - s >= 2]
        assert global_batches(n, 64, 1) == old
        perm = np.arange(n)
        assert all(np.array_equal(shard(perm[s:t], 0, 1), perm[s:t]) for s, t in old)


def test_outside_torchrun_a_process_is_rank_zero_of_one(monkeypatch):
    import torch

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    ranks = setup("auto")
    assert (ranks.rank, ranks.world, ranks.distributed, ranks.is_main) == (0, 1, False, True)
    net = torch.nn.Linear(2, 2)
    assert ranks.wrap(net) is net
    assert ranks.broadcast({"stop": True}) == {"stop": True}
    assert ranks.mean(6.0, 3) == 2.0
    assert resolve_backend("auto", cuda=False) == "gloo"
    assert resolve_backend("auto", cuda=True) == "nccl"
    with pytest.raises(ValueError, match="nccl needs CUDA"):
        resolve_backend("nccl", cuda=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    """One rank of `test_ddp_replicas_stay_identical`: train, save what it ended with."""
    import torch

    from shortlist.config import Params
    from shortlist.models.fit import fit_towers

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    tp = Params().towers.model_copy(
        update={
            "embedding_dim": 8,
            "hidden_dim": 16,
            "id_dim": 8,
            "history_len": 5,
            "batch_size": 64,
            "mixed_negatives": 16,
            "title_hash_buckets": 64,
            "history_mode": "causal",
            "threads": 1,
        },
    )
    tp = tp.model_copy(update={"logq": tp.logq.model_copy(update={"hash_buckets": 1024})})
    train, validation, items, users = tiny_data()
    ranks = setup("gloo")
    try:
        early, vset, _ = fit_towers(
            tp, train, items, users, 5, 4, validation, False, "", None, ranks
        )
        # without validation every rank keeps its last averaged weights: its replica
        last, _, _ = fit_towers(tp, train, items, users, 5, 2, None, False, "", None, ranks)
    finally:
        ranks.close()
    state = {k: v.numpy() for k, v in last.net.state_dict().items()}
    np.savez(Path(out) / f"rank{rank}.npz", **state)
    doc = {"best_epoch": early.best_epoch, "history": early.history, "vset": vset is not None}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(doc))


def test_ddp_replicas_stay_identical_and_stop_together(tmp_path):
    """Two gloo ranks in spawned processes: identical weights after training (the
    gradients were averaged, the steps and the averaged weights match), the same best
    epoch on both though only rank 0 validated."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    docs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert docs[0]["vset"] and not docs[1]["vset"]
    assert docs[0]["best_epoch"] == docs[1]["best_epoch"] >= 1
    assert "val_recall@20" in docs[0]["history"][0] and "val_recall@20" not in docs[1]["history"][0]
    # the recorded loss is the mean over both ranks' steps, so it is the same on both
    assert [h["loss"] for h in docs[0]["history"]] == [h["loss"] for h in docs[1]["history"]]
    states = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    assert set(states[0].files) == set(states[1].files) and states[0].files
    for key in states[0].files:
        np.testing.assert_array_equal(states[0][key], states[1][key], err_msg=key)


#: Small towers on the tiny dataset (16k train interactions, 63 global batches an epoch).
SMALL = {
    "towers.threads": 1,
    "towers.epochs": 6,
    "towers.embedding_dim": 32,
    "towers.hidden_dim": 64,
    "towers.id_dim": 32,
    "towers.history_len": 20,
    "towers.batch_size": 256,
    "towers.mixed_negatives": 128,
    "towers.title_hash_buckets": 1024,
    "towers.logq.hash_buckets": 16384,
    "project.seed": 1,
}


@pytest.mark.e2e  # 85-100 s on 2 shared cores (load 4-6): two trainings, one under torchrun
def test_train_towers_cli_on_two_processes(tiny_dataset, params, tmp_path, capsys, record_property):
    """`shortlist train-towers` with towers.processes=2 launches torchrun, writes one model
    in the usual format and validates within seed noise of one process. Reports the
    early-stopping epochs' examples/s of both (pytest -s, or the JUnit XML properties)."""
    import yaml
    from mlflow.tracking import MlflowClient

    from pipelines import split
    from shortlist.cli import main
    from shortlist.models.two_tower import TwoTowerRetriever
    from shortlist.tracking import tracking_uri

    # Its own experiment: the session's MLflow server holds other tests' runs too.
    params = params.with_overrides({"mlflow.experiment": f"ddp-{tmp_path.name}"})
    split_dir = tmp_path / "split"
    split.run(params, data_dir=tiny_dataset, out_dir=str(split_dir))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    results, dirs = {}, {}
    for n in (1, 2):
        dirs[n] = tmp_path / f"model-{n}"
        args = ["train-towers", str(split_dir), "--out", str(dirs[n]), "--params", str(params_file)]
        args += [f"--set={k}={v}" for k, v in {**SMALL, "towers.processes": n}.items()]
        assert main(args) == 0
        results[n] = json.loads(capsys.readouterr().out)

    one, two = results[1], results[2]
    assert (one["processes"], two["processes"]) == (1, 2)
    # the same files, the same model format, loadable, one MLflow run per training
    assert sorted(p.name for p in dirs[1].rglob("*")) == sorted(p.name for p in dirs[2].rglob("*"))
    model = TwoTowerRetriever.load(str(dirs[2]))
    assert model.fingerprint == two["fingerprint"]
    assert model.meta["mlflow_run_id"] == two["mlflow_run_id"]
    doc = [json.loads((dirs[n] / "towers.json").read_text()) for n in (1, 2)]
    assert doc[0].keys() == doc[1].keys() and doc[0]["config"] == doc[1]["config"]
    assert json.loads((dirs[2] / "metrics.json").read_text())["processes"] == 2
    history = json.loads((dirs[2] / "history.json").read_text())
    assert history["processes"] == 2 and history["refit"]["epochs"] == two["best_epoch"]
    client = MlflowClient(tracking_uri(params))
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id])
    assert {r.info.run_id for r in runs} == {one["mlflow_run_id"], two["mlflow_run_id"]}
    # Seed noise: over seeds 1-4 one process scored validation Recall@20 0.1435, 0.1489,
    # 0.1471, 0.1504 here (sd 0.003), two processes 0.1445, 0.1537, 0.1499, 0.1481. Two
    # processes draw other negatives and dropout and score a half-width in-batch softmax:
    # another seed, in effect. The difference of two such runs has sd ~0.0042; 0.015 is
    # ~3.5 of those, so a correct run fails it about once in 2,000.
    delta = two["validation"]["recall@20"] - one["validation"]["recall@20"]
    assert abs(delta) < 0.015, (one["validation"], two["validation"])
    assert two["validation"]["recall@20"] > 0.1  # and far above chance (20 / 598 items)
    for n in (1, 2):
        speed = json.loads((dirs[n] / "history.json").read_text())["timings"]
        record_property(f"examples_per_second_{n}_processes", speed["examples_per_second"])
        print(f"{n} process(es): {speed['examples_per_second']:.0f} examples/s")


def test_processes_above_one_launch_torchrun_with_the_same_params(params, tmp_path, monkeypatch):
    """Outside torchrun, train_towers.run with towers.processes=2 runs torchrun on this
    stage's module with a params file equal to the params given, and returns rank 0's
    summary; a failed launch is an error naming its exit status."""
    import subprocess

    from pipelines import train_towers
    from shortlist.config import load_params

    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    p = params.with_overrides({"towers.processes": 2, "towers.epochs": 3})
    seen = {}

    def fake_run(cmd, check):
        seen["cmd"] = cmd
        seen["params"] = load_params(cmd[cmd.index("--params") + 1])
        Path(cmd[cmd.index("--result") + 1]).write_text(json.dumps({"processes": 2}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    out = train_towers.run(p, split_dir=str(tmp_path / "split"), out_dir=str(tmp_path / "m"))
    assert out == {"processes": 2}
    cmd = seen["cmd"]
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert cmd[5:7] == ["-m", "pipelines.train_towers"]
    assert cmd[cmd.index("--split") + 1] == str(tmp_path / "split")
    assert seen["params"] == p
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(RuntimeError, match="2 processes.*exit status 1"):
        train_towers.run(p, split_dir=str(tmp_path / "split"), out_dir=str(tmp_path / "m"))


def test_every_rank_feeds_the_whole_global_batch_to_the_frequency_estimate(tiny_params):
    """The logQ estimate is rank-independent: each rank updates it with the global batch
    (not its shard) at the global step, so after the same steps every rank holds the
    estimate one process would, while each scores only its own shard's candidates."""
    import torch

    from shortlist.models.examples import build_examples, item_feature_tensors
    from shortlist.models.features import FeatureState
    from shortlist.models.logq import StreamingFrequencyEstimator
    from shortlist.models.objective import make_optimizer, train_step
    from shortlist.models.two_tower import build_net

    tp = tiny_params.towers.model_copy(update={"history_mode": "causal", "mixed_negatives": 8})
    train, _, items, users = tiny_data()
    state = FeatureState.fit(train, items, users, title_hash_buckets=64, user_buckets=1)
    examples = build_examples(train, state, users, tp.history_len, "causal")
    feats = item_feature_tensors(state, items)
    perm = np.random.default_rng(0).permutation(len(examples))
    estimators = [StreamingFrequencyEstimator(4096, tp.logq.alpha) for _ in range(3)]
    for e in estimators:
        e.update(examples.item_idx, 0)  # the same warm-up on every rank
    step = estimators[0].steps_seen
    for s, stop in global_batches(len(examples), 64, 2)[:4]:
        rows = perm[s:stop]
        for rank in (0, 1):
            torch.manual_seed(0)
            net = build_net(state, {**tiny_params.towers.model_dump(), "history_len": 5}, items)
            loss = train_step(
                net, make_optimizer(net, tp), examples, shard(rows, rank, 2), feats,
                estimators[rank], step, tp, np.random.default_rng(rank), stream_rows=rows,
            )  # fmt: skip
            assert np.isfinite(loss)
        estimators[2].update(examples.item_idx[rows], step)  # one process's stream
        step += len(rows)
    for other in estimators[1:]:
        np.testing.assert_array_equal(estimators[0].gap, other.gap)
        np.testing.assert_array_equal(estimators[0].last_seen, other.last_seen)
        assert estimators[0].steps_seen == other.steps_seen
