"""Two-tower inference speed: embed_items throughput and single-user embed_users latency.

Builds a synthetic catalog (title words, pipe-joined genres, year) and a model with the default
tower sizes (untrained weights: speed does not depend on them), then measures
- embed_items items/s on catalogs of each --sizes (torch threads = --item-threads),
- embed_users / query_vectors for ONE user with a 50-item history on 1 thread: p50/p99 over
  --repeats calls, with no user features, with a one-row user frame, and with the full
  user table passed in.
Wall time and process CPU time are both reported, with the load average (the machine may be
shared). Writes benchmarks/results/model_inference.json (or --out).

Reproduce: .venv/bin/python benchmarks/model_inference.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

if __package__:  # imported as benchmarks.<name>
    from .provenance import provenance
else:  # run as a script: benchmarks/ is sys.path[0]
    from provenance import provenance

WORDS = [f"w{k}" for k in range(20_000)] + ["the", "of", "and", "a", "love", "night", "man"]
GENRES = ["Action", "Adventure", "Animation", "Comedy", "Crime", "Drama", "Fantasy", "Horror"]


def synth_items(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    words = np.asarray(WORDS, dtype=object)
    n_words = rng.integers(1, 7, n)
    pick = words[rng.integers(0, len(words), n_words.sum())]
    ends = np.cumsum(n_words)
    titles = [
        " ".join(pick[e - k : e]) + f" ({y})"
        for e, k, y in zip(ends, n_words, rng.integers(1920, 2025, n), strict=True)
    ]
    genre_sets = [
        "|".join(sorted(set(rng.choice(GENRES, rng.integers(1, 4))))) for _ in range(min(n, 5000))
    ]
    return pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(n)],
            "title": titles,
            "genres": [genre_sets[k % len(genre_sets)] for k in range(n)],
            "year": rng.integers(1920, 2025, n).astype(float),
        }
    )


def synth_users(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in range(n)],
            "age": rng.integers(18, 70, n),
            "gender": rng.choice(["M", "F"], n),
            "occupation": rng.choice([f"occ{k}" for k in range(20)], n),
        }
    )


def build_model(n_vocab_items: int, n_users: int):
    from shortlist.config import Params
    from shortlist.models.features import FeatureState
    from shortlist.models.two_tower import TwoTowerRetriever, build_net

    t = Params().towers if hasattr(Params(), "towers") else None
    config = {
        "id_dim": getattr(t, "id_dim", 64),
        "hidden_dim": getattr(t, "hidden_dim", 128),
        "embedding_dim": getattr(t, "embedding_dim", 64),
        "history_len": getattr(t, "history_len", 50),
        "temperature": getattr(t, "temperature", 0.05),
    }
    items = synth_items(n_vocab_items, seed=2)
    users = synth_users(n_users)
    rng = np.random.default_rng(3)
    train = pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy()[rng.integers(0, n_users, 4 * n_vocab_items)],
            "item_id": np.concatenate(
                [
                    items["item_id"].to_numpy(),
                    items["item_id"].to_numpy()[rng.integers(0, n_vocab_items, 3 * n_vocab_items)],
                ]
            ),
            "timestamp": rng.integers(0, 10**9, 4 * n_vocab_items),
        }
    )
    state = FeatureState.fit(
        train, items, users, title_hash_buckets=getattr(t, "title_hash_buckets", 4096)
    )
    net = build_net(state, config, items)
    return TwoTowerRetriever(net, state, config, items), items, users


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="200000,1000000")
    ap.add_argument("--item-threads", type=int, default=2)
    ap.add_argument("--vocab-items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default="benchmarks/results/model_inference.json")
    args = ap.parse_args()

    import torch

    model, vocab_items, users = build_model(args.vocab_items, args.users)
    result: dict = {
        "command": "python benchmarks/model_inference.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in {"out"} and v != ""
        ),
        "label": args.label,
        "provenance": provenance(__file__),  # at start: commit, CPU, probe, load, versions
        "data": {
            "catalog": "synthetic: 1-6 title words + (year), 1-3 genres, year; model vocabulary "
            f"= first {args.vocab_items} items, {args.users} users (age, gender, occupation)",
            "model": dict(model.config),
        },
        "embed_items": [],
        "embed_users": {},
    }

    torch.set_num_threads(args.item_threads)
    for n in [int(s) for s in args.sizes.split(",") if s]:
        items = synth_items(n, seed=5)
        model.embed_items(items.iloc[:5000])  # warm-up (builds the id lookup)
        la = os.getloadavg()
        w0, c0 = time.perf_counter(), time.process_time()
        model.embed_items(items)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        w1, c1 = time.perf_counter(), time.process_time()
        model.state.encode_items(items)  # the preprocessing share of the time above
        enc_wall, enc_cpu = time.perf_counter() - w1, time.process_time() - c1
        row = {
            "items": n,
            "encode_items_wall_s": round(enc_wall, 3),
            "encode_items_cpu_s": round(enc_cpu, 3),
            "threads": args.item_threads,
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "items_per_s_wall": round(n / wall),
            "items_per_s_cpu": round(n / cpu),
            "load_avg_1m_before": la[0],
            "load_avg_1m_after": os.getloadavg()[0],
        }
        print(
            f"embed_items n={n}: {row['items_per_s_wall']} items/s wall ({wall:.2f} s), "
            f"{row['items_per_s_cpu']} items/s per CPU-second (encode_items alone {enc_cpu:.2f} CPU-s), "
            f"load {la[0]:.1f}",
            flush=True,
        )
        result["embed_items"].append(row)
        del items

    torch.set_num_threads(1)
    rng = np.random.default_rng(7)
    vocab = vocab_items["item_id"].to_numpy()
    uid = users["user_id"].iloc[123]
    history = [str(i) for i in vocab[rng.integers(0, len(vocab), 50)]]
    one_row = users[users["user_id"] == uid].reset_index(drop=True)
    cases = {
        "no_user_features": lambda: model.embed_users([uid], [history], None, [1.7e9]),
        "one_row_user_frame": lambda: model.embed_users([uid], [history], one_row, [1.7e9]),
        "full_user_table": lambda: model.embed_users([uid], [history], users, [1.7e9]),
        "query_vectors_one_row": lambda: model.query_vectors([uid], [history], one_row, [1.7e9]),
    }
    for name, fn in cases.items():
        for _ in range(10):
            fn()
        la = os.getloadavg()
        walls, cpus = [], []
        for _ in range(args.repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        row = {
            "history_len": len(history),
            "threads": 1,
            "repeats": args.repeats,
            "p50_ms_wall": round(pct(walls, 50), 3),
            "p99_ms_wall": round(pct(walls, 99), 3),
            "mean_ms_cpu": round(float(np.mean(cpus)) * 1e3, 3),
            "load_avg_1m": la[0],
        }
        print(
            f"embed_users[{name}]: p50 {row['p50_ms_wall']} ms, p99 {row['p99_ms_wall']} ms wall, "
            f"mean CPU {row['mean_ms_cpu']} ms, load {la[0]:.1f}",
            flush=True,
        )
        result["embed_users"][name] = row

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
