"""The two-tower retrieval model: a query tower and an item tower meeting only at a dot product.

Query tower: user id embedding (with buckets for unseen users) + the user's recent history
(item id embeddings and genres, pooled with learned recency weights) + user features +
request context (hour, weekday) -> MLP -> L2-normalised d-vector.
Item tower: item id embedding (index 0 is the out-of-vocabulary bucket; id dropout in
training makes content carry signal) + genres multi-hot + hashed title tokens + numerics
-> MLP -> L2-normalised d-vector. Score = dot / temperature.

`TwoTowerRetriever` wraps the network with its feature preprocessing; a model dir holds
towers.safetensors (weights, no pickle), towers.json (config + preprocessing state +
metadata) and items.parquet (the catalog the model was trained with).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from shortlist.data import schema
from shortlist.models.bag_sums import bag_sums
from shortlist.models.features import TITLE_TOKENS, FeatureState, encode_context
from shortlist.models.table_rows import distinct_rows, gather_rows
from shortlist.models.vectors import widen_queries

WEIGHTS = "towers.safetensors"
CONFIG = "towers.json"
ITEMS = "items.parquet"
CAT_DIM = 8  # embedding width of each user categorical feature and each context field


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))


class TwoTowerNet(nn.Module):
    """The network. Inputs are the integer/float arrays produced by FeatureState."""

    def __init__(self, state: FeatureState, config: dict[str, Any]) -> None:
        super().__init__()
        e = int(config["id_dim"])
        h = int(config["hidden_dim"])
        d = int(config["embedding_dim"])
        self.history_len = int(config["history_len"])
        # Item side.
        self.item_id = nn.Embedding(state.n_item_ids, e)
        self.title = nn.EmbeddingBag(state.title_hash_buckets + 1, e, mode="sum", padding_idx=0)
        n_item_in = e + e + state.n_genres + state.n_item_numeric
        self.item_mlp = _mlp(n_item_in, h, d)
        # Query side.
        self.user_id = nn.Embedding(state.n_user_ids, e)
        self.history_item = nn.Embedding(state.n_item_ids, e, padding_idx=0)
        self.recency = nn.Parameter(torch.zeros(self.history_len))
        self.user_feats = nn.ModuleList(nn.Embedding(c, CAT_DIM) for c in state.user_cardinalities)
        self.hour = nn.Embedding(25, CAT_DIM)
        self.weekday = nn.Embedding(8, CAT_DIM)
        n_query_in = e * 2 + state.n_genres
        n_query_in += CAT_DIM * (len(self.user_feats) + 2)
        self.query_mlp = _mlp(n_query_in, h, d)
        self.register_buffer("genre_table", torch.zeros(state.n_item_ids, state.n_genres))
        self.log_temperature = float(np.log(config["temperature"]))
        for emb in (self.item_id, self.user_id, self.history_item, self.title):
            nn.init.normal_(emb.weight, std=0.05)

    def item_forward(
        self,
        item_idx: torch.Tensor,
        genres: torch.Tensor,
        title: torch.Tensor,
        numerics: torch.Tensor,
        rows: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """The item vectors. `rows` (sparse tables in training: `distinct_rows` of
        `item_idx` and `title` under "item_id" and "title") reads the ids through their
        gathered rows: the same values, each table row's gradient already summed."""
        if rows is None:
            ids, title_sum = self.item_id(item_idx), self.title(title)
        else:
            ids = _lookup(self.item_id.weight, rows["item_id"])
            title_sum = bag_sums(
                gather_rows(self.title.weight, rows["title"]["rows"]),
                rows["title"]["local"],
                padding_row=0,  # row 0 is position 0 of the title's distinct rows
            )
        title_vec = title_sum / title.gt(0).sum(1, keepdim=True).clamp(min=1)
        x = torch.cat([ids, title_vec, genres, numerics], dim=1)
        return nn.functional.normalize(self.item_mlp(x), dim=1)

    def query_forward(
        self,
        user_idx: torch.Tensor,
        user_feats: torch.Tensor,
        history: torch.Tensor,
        context: torch.Tensor,
        bags: dict[str, torch.Tensor] | None = None,
        rows: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """The query vectors. `bags` (`history_bags(history)`, computed ahead) pools the
        history over its distinct filled items instead of the whole (batch, len) window;
        `rows` (sparse tables in training: `distinct_rows` of `user_idx` under "user_id")
        reads the user ids through their gathered rows, as `item_forward` does."""
        mask = history.gt(0)
        # Learned recency weights: softmax over the filled positions (last = most recent).
        logits = self.recency.expand_as(history).masked_fill(~mask, -1e9)
        w = torch.softmax(logits, dim=1) * mask.any(1, keepdim=True)
        if bags is None:
            hist = torch.einsum("bl,ble->be", w, self.history_item(history))
            hist_genres = torch.einsum("bl,blg->bg", w, self.genre_table[history])
        else:
            hist, hist_genres = self._pool_bags(w, bags)
        user = (
            self.user_id(user_idx)
            if rows is None
            else _lookup(self.user_id.weight, rows["user_id"])
        )
        parts = [user, hist, hist_genres]
        parts += [emb(user_feats[:, k]) for k, emb in enumerate(self.user_feats)]
        parts += [self.hour(context[:, 0]), self.weekday(context[:, 1])]
        return nn.functional.normalize(self.query_mlp(torch.cat(parts, dim=1)), dim=1)

    def _pool_bags(
        self, w: torch.Tensor, bags: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The recency-weighted sums of the history's item and genre rows, as weighted
        bags over the distinct items: the item table is read (and, with sparse tables,
        updated) once per distinct item, and padding costs nothing."""
        items, inverse, offsets = bags["items"], bags["inverse"], bags["offsets"]
        weights = w.flatten().index_select(0, bags["positions"])
        bag_of = bags["positions"].div(w.shape[1], rounding_mode="floor")  # batch rows
        table = self.history_item
        rows = gather_rows(table.weight, items) if table.sparse else table(items)
        hist = bag_sums(rows, inverse, offsets, weights, bag_of=bag_of)
        genres = self.genre_table.index_select(0, items)
        hist_genres = bag_sums(genres, inverse, offsets, weights, bag_of=bag_of)
        return hist, hist_genres


def _lookup(weight: torch.Tensor, index: dict[str, torch.Tensor]) -> torch.Tensor:
    """weight[indices] through the indices' distinct rows (`distinct_rows`)."""
    return nn.functional.embedding(index["local"], gather_rows(weight, index["rows"]))


def history_bags(history: torch.Tensor) -> dict[str, torch.Tensor]:
    """The index `TwoTowerNet.query_forward` pools a (batch, len) history with: its
    distinct filled items (`items`), for each filled position in row order its flat
    position (`positions`) and the row of `items` it holds (`inverse`), and where each
    batch row's positions start (`offsets`). A row with no history is an empty bag."""
    flat = history.flatten()
    positions = torch.nonzero(flat, as_tuple=True)[0]
    index = distinct_rows(flat.index_select(0, positions))
    items, inverse = index["rows"], index["local"]
    counts = history.gt(0).sum(1)
    offsets = torch.zeros(len(history), dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)[:-1]
    return {"items": items, "inverse": inverse, "positions": positions, "offsets": offsets}


def history_matrix(histories: Sequence[Sequence[str]], state: FeatureState, n: int) -> np.ndarray:
    """(len, n) vocabulary indices, most recent last, left-padded with 0; unknown ids dropped."""
    out = np.zeros((len(histories), n), dtype=np.int64)
    for r, hist in enumerate(histories):
        idx = state.item_index(hist) if len(hist) else np.zeros(0, dtype=np.int64)
        idx = idx[idx > 0][-n:]
        if len(idx):
            out[r, n - len(idx) :] = idx
    return out


class TwoTowerRetriever:
    """A trained two-tower model with its preprocessing: the unit the rest of Shortlist uses."""

    def __init__(
        self,
        net: TwoTowerNet,
        state: FeatureState,
        config: dict[str, Any],
        items: pd.DataFrame,
        meta: dict[str, Any] | None = None,
        fingerprint: str = "",
    ) -> None:
        self.net = net.eval()
        self.state = state
        self.config = dict(config)
        self.items = items.reset_index(drop=True)
        self.meta = dict(meta or {})
        self.fingerprint = fingerprint or self._weights_hash()

    # --- properties ----------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        return int(self.config["embedding_dim"])

    @property
    def index_dim(self) -> int:
        """Width of item_vectors / query_vectors: the embedding, plus one column when the
        inference popularity term is on (what a serving index holds)."""
        return self.embedding_dim + (1 if self.popularity_weight else 0)

    @property
    def history_len(self) -> int:
        return int(self.config["history_len"])

    @property
    def temperature(self) -> float:
        return float(self.config["temperature"])

    @property
    def item_ids(self) -> np.ndarray:
        return self.items[schema.ITEM_ID].astype(str).to_numpy()

    # --- persistence ------------------------------------------------------------------
    def _weights_bytes(self) -> bytes:
        from safetensors.torch import save

        tensors = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        return save(tensors, metadata={"format": "pt"})

    def _weights_hash(self) -> str:
        return hashlib.sha256(self._weights_bytes()).hexdigest()

    def save(self, model_dir: str) -> None:
        """Write towers.safetensors, towers.json and items.parquet into model_dir."""
        out = Path(model_dir)
        out.mkdir(parents=True, exist_ok=True)
        blob = self._weights_bytes()
        self.fingerprint = hashlib.sha256(blob).hexdigest()
        (out / WEIGHTS).write_bytes(blob)
        self.items.to_parquet(out / ITEMS, index=False)
        doc = {
            "format": 1,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "features": self.state.to_dict(),
            **self.meta,
        }
        (out / CONFIG).write_text(json.dumps(doc, indent=2, default=_json_default))

    @classmethod
    def load(cls, model_dir: str) -> TwoTowerRetriever:
        from safetensors.torch import load

        root = Path(model_dir)
        doc = json.loads((root / CONFIG).read_text())
        blob = (root / WEIGHTS).read_bytes()
        fingerprint = hashlib.sha256(blob).hexdigest()
        if doc.get("fingerprint") and doc["fingerprint"] != fingerprint:
            raise ValueError(f"{root / WEIGHTS} does not match the fingerprint in {CONFIG}")
        state = FeatureState.from_dict(doc["features"])
        net = TwoTowerNet(state, doc["config"])
        net.load_state_dict(load(blob))
        meta = {
            k: v for k, v in doc.items() if k not in {"format", "fingerprint", "config", "features"}
        }
        items = pd.read_parquet(root / ITEMS)
        return cls(net, state, doc["config"], items, meta=meta, fingerprint=fingerprint)

    # --- inference ------------------------------------------------------------------
    def embed_items(self, items: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
        """(n, d) float32 L2-normalised item embeddings; unseen ids use the OOV bucket."""
        enc = self.state.encode_items(items)
        out = np.zeros((len(items), self.embedding_dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(items), batch_size):
                sl = slice(s, s + batch_size)
                v = self.net.item_forward(
                    torch.from_numpy(enc["item_idx"][sl]),
                    torch.from_numpy(enc["genres"][sl]),
                    torch.from_numpy(enc["title"][sl]),
                    torch.from_numpy(enc["numerics"][sl]),
                )
                out[sl] = v.numpy()
        return out

    def embed_users(
        self,
        user_ids: Sequence[str],
        histories: Sequence[Sequence[str]],
        users: pd.DataFrame | None = None,
        timestamps: Sequence[float] | None = None,
        batch_size: int = 4096,
    ) -> np.ndarray:
        """(n, d) float32 L2-normalised query embeddings.

        histories: per user, item ids oldest to newest (ids unknown to the model are
        ignored); users: feature table (None: features unknown); timestamps: request time
        per user for the context features (None: unknown context).
        """
        ids = [str(u) for u in user_ids]
        if len(histories) != len(ids):
            raise ValueError("one history per user is required")
        enc = self.state.encode_users(ids, users)
        hist = history_matrix(histories, self.state, self.history_len)
        ctx = encode_context(timestamps, len(ids))
        out = np.zeros((len(ids), self.embedding_dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(ids), batch_size):
                sl = slice(s, s + batch_size)
                v = self.net.query_forward(
                    torch.from_numpy(enc["user_idx"][sl]),
                    torch.from_numpy(enc["user_feats"][sl]),
                    torch.from_numpy(hist[sl]),
                    torch.from_numpy(ctx[sl]),
                )
                out[sl] = v.numpy()
        return out

    # --- the inference popularity term, folded into one extra dimension ------------
    @property
    def popularity_weight(self) -> float:
        return float(self.meta.get("inference_popularity_weight", 0.0) or 0.0)

    def log_popularity(self, item_ids: Sequence[str]) -> np.ndarray:
        """Smoothed log training frequency per item (unseen items: the zero-count value)."""
        table = self.meta.get("item_log_popularity") or {}
        floor = float(self.meta.get("log_popularity_floor", min(table.values(), default=0.0)))
        return np.array([table.get(str(i), floor) for i in item_ids], dtype=np.float32)

    def item_vectors(self, items: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
        """Item side of the serving score: embed_items, plus one column when the
        inference popularity term is on (weight * temperature * log popularity).

        query_vectors(...) @ item_vectors(...).T ranks exactly like
        dot / temperature + weight * log popularity, so a FAISS inner-product index over
        these vectors serves the corrected score. Without the term they equal the embeddings.
        """
        emb = self.embed_items(items, batch_size)
        w = self.popularity_weight
        if not w:
            return emb
        pop = self.log_popularity(items[schema.ITEM_ID].astype(str))
        return np.hstack([emb, (w * self.temperature * pop)[:, None]]).astype(np.float32)

    def query_vectors(
        self,
        user_ids: Sequence[str],
        histories: Sequence[Sequence[str]],
        users: pd.DataFrame | None = None,
        timestamps: Sequence[float] | None = None,
    ) -> np.ndarray:
        """Query side matching item_vectors: embed_users, plus a column of ones when the
        inference popularity term is on."""
        emb = self.embed_users(user_ids, histories, users, timestamps)
        return widen_queries(emb, self.index_dim)

    def histories_from(
        self, interactions: pd.DataFrame, user_ids: Sequence[str]
    ) -> list[list[str]]:
        """The last history_len item ids per user, ordered by (timestamp, item_id)."""
        return histories_from(interactions, user_ids, self.history_len)

    def last_timestamps(self, interactions: pd.DataFrame, user_ids: Sequence[str]) -> np.ndarray:
        """Each user's latest interaction time (NaN when none): a proxy request context."""
        last = interactions.groupby(interactions[schema.USER_ID].astype(str))[
            schema.TIMESTAMP
        ].max()
        return last.reindex([str(u) for u in user_ids]).to_numpy(dtype=float)


def histories_from(interactions: pd.DataFrame, user_ids: Sequence[str], n: int) -> list[list[str]]:
    ids = [str(u) for u in user_ids]
    if not len(interactions):
        return [[] for _ in ids]
    df = pd.DataFrame(
        {
            "u": interactions[schema.USER_ID].astype(str).to_numpy(),
            "i": interactions[schema.ITEM_ID].astype(str).to_numpy(),
            "t": interactions[schema.TIMESTAMP].to_numpy(),
        }
    )
    df = df[df["u"].isin(set(ids))].sort_values(["u", "t", "i"], kind="stable")
    tails = df.groupby("u", sort=False)["i"].apply(lambda s: s.tolist()[-n:]).to_dict()
    return [tails.get(u, []) for u in ids]


def build_net(state: FeatureState, config: dict[str, Any], items: pd.DataFrame) -> TwoTowerNet:
    """A fresh network with its history genre lookup filled from the item table."""
    net = TwoTowerNet(state, config)
    _set_genre_table(net, state, items)
    return net


def _set_genre_table(net: TwoTowerNet, state: FeatureState, items: pd.DataFrame) -> None:
    """Fill the history genre lookup (vocabulary index -> genres multi-hot)."""
    enc = state.encode_items(items)
    table = torch.zeros_like(net.genre_table)
    idx = torch.from_numpy(enc["item_idx"])
    known = idx > 0
    table[idx[known]] = torch.from_numpy(enc["genres"])[known]
    net.genre_table.copy_(table)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


__all__ = ["TITLE_TOKENS", "TwoTowerNet", "TwoTowerRetriever", "build_net", "history_matrix"]
