"""The trained ranker as serving and evaluation load it: `Ranker.load(model_dir).score(...)`.

Files, beside the towers in MODEL_DIR (no pickle):

- ``ranker.safetensors``: network weights plus the feature arrays (item genres and
  numerics, user feature table, standardisation statistics, and the per-item popularity
  and recent-trend snapshots as of the end of the training log), and the EASE item-item
  table when the blend is what ships;
- ``ranker.json``: format, network config, feature-space metadata (vocabularies, windows,
  groups, feature names), the snapshot time, the towers' fingerprint, the candidate
  sources' sizes, which order ships (``order``: the network, ``ranker``, or the item-item
  blend of `shortlist.ranking.item_item`, ``blend``, with its ``blend_weight``), training
  summary.

At serving time the item statistics come from the snapshot (the feature store "now"),
user-side features from the request's history, context from the request time; the
retrieval scores are the ones the index returned (passed in `context`) or, when absent,
recomputed with the towers beside the ranker.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shortlist.ranking.cooccurrence import ItemNeighbours
from shortlist.ranking.features import FeatureSpace, Request
from shortlist.ranking.item_item import blend, item_item_scores
from shortlist.ranking.sources import CandidateSources, popular_order

WEIGHTS = "ranker.safetensors"
CONFIG = "ranker.json"
FORMAT = 1


class Ranker:
    """A DCN ranker (or an ensemble of them) with its feature state; scores the
    candidates of one request with the network, or with the item-item blend when that is
    the order that won (``meta["order"] == "blend"``)."""

    def __init__(
        self,
        space: FeatureSpace,
        model: Any,
        popularity: np.ndarray,
        meta: dict[str, Any] | None = None,
        *,
        trend: np.ndarray | None = None,
        item_item: ItemNeighbours | None = None,
    ) -> None:
        self.space = space
        self.model = model.eval()
        # One extra zero row for candidates outside the ranker's catalog.
        self.popularity = np.vstack([popularity, np.zeros((1, popularity.shape[1]), np.float32)])
        self.meta = dict(meta or {})
        #: Recent-trend popularity per catalog position (the popular candidate source).
        self.trend = (
            np.zeros(space.n_items, np.float32) if trend is None else np.asarray(trend, np.float32)
        )
        #: EASE item-item weights over the catalog (the blend's second score).
        self.item_item = item_item
        if self.order == "blend" and item_item is None:
            raise ValueError("a blend ranker needs its item-item table")
        self._retrieval: Any = None
        self._sources: CandidateSources | None = None
        self._model_dir: str | None = None

    @property
    def order(self) -> str:
        """Which order this ranker serves: ``ranker`` (the network) or ``blend``."""
        return str(self.meta.get("order", "ranker"))

    # ---- persistence -----------------------------------------------------------------
    def save(self, model_dir: str) -> dict[str, str]:
        """Write ranker.safetensors and ranker.json; returns their sha256 checksums."""
        from safetensors.numpy import save

        out = Path(model_dir)
        out.mkdir(parents=True, exist_ok=True)
        meta, arrays = self.space.state()
        tensors = {
            f"model.{k}": v.detach().cpu().numpy() for k, v in self.model.state_dict().items()
        }
        tensors.update({k: np.ascontiguousarray(v) for k, v in arrays.items()})
        tensors["snapshot.popularity"] = np.ascontiguousarray(self.popularity[:-1])
        tensors["snapshot.trend"] = np.ascontiguousarray(self.trend)
        if self.item_item is not None:
            tensors.update(self.item_item.arrays("item_item"))
        blob = save(tensors, metadata={"format": str(FORMAT)})
        (out / WEIGHTS).write_bytes(blob)
        digest = hashlib.sha256(blob).hexdigest()
        doc = {
            "format": FORMAT,
            "weights_sha256": digest,
            "model": self.model.config,
            "features": meta,
            **self.meta,
        }
        text = json.dumps(doc, indent=2, default=_json_default)
        (out / CONFIG).write_text(text)
        return {WEIGHTS: digest, CONFIG: hashlib.sha256(text.encode()).hexdigest()}

    @classmethod
    def load(cls, model_dir: str) -> Ranker:
        import torch
        from safetensors.numpy import load

        from shortlist.ranking.model import model_from_config

        root = Path(model_dir)
        doc = json.loads((root / CONFIG).read_text())
        if doc.get("format") != FORMAT:
            raise ValueError(f"{root / CONFIG}: unsupported ranker format {doc.get('format')}")
        blob = (root / WEIGHTS).read_bytes()
        if doc.get("weights_sha256") != hashlib.sha256(blob).hexdigest():
            raise ValueError(f"{root / WEIGHTS} does not match the checksum in {CONFIG}")
        arrays = load(blob)
        space = FeatureSpace.from_state(doc["features"], arrays)
        model = model_from_config(doc["model"])
        state = {
            k[len("model.") :]: torch.from_numpy(v)
            for k, v in arrays.items()
            if k.startswith("model.")
        }
        model.load_state_dict(state)
        meta = {
            k: v
            for k, v in doc.items()
            if k not in {"format", "weights_sha256", "model", "features"}
        }
        item_item = (
            ItemNeighbours.from_arrays(arrays, "item_item")
            if "item_item.indptr" in arrays
            else None
        )
        ranker = cls(
            space,
            model,
            arrays["snapshot.popularity"],
            meta,
            trend=arrays.get("snapshot.trend"),
            item_item=item_item,
        )
        ranker._model_dir = str(root)
        return ranker

    @staticmethod
    def exists(model_dir: str) -> bool:
        return (Path(model_dir) / WEIGHTS).exists() and (Path(model_dir) / CONFIG).exists()

    def candidate_sources(self) -> CandidateSources:
        """The extra candidate sources this ranker was trained with, over its catalog."""
        if self._sources is not None:
            return self._sources
        sizes = self.meta.get("sources") or {}
        self._sources = CandidateSources(
            neighbours=self.space.neighbours,
            popular_order=popular_order(self.trend),
            item_to_item=int(sizes.get("item_to_item", 0)),
            popular=int(sizes.get("popular", 0)),
        )
        return self._sources

    # ---- scoring ---------------------------------------------------------------------
    def score_features(self, dense: np.ndarray, user_idx: int, item_idx: np.ndarray) -> np.ndarray:
        """Logits for a standardised feature matrix (one request)."""
        import torch

        with torch.inference_mode():
            out = self.model(
                torch.from_numpy(dense),
                torch.full((len(dense),), int(user_idx), dtype=torch.long),
                torch.from_numpy(np.asarray(item_idx, dtype=np.int64)),
            )
        return out.numpy()

    def score(
        self,
        user_id: str,
        history: Sequence[str],
        candidate_item_ids: Sequence[str],
        context: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """Ranker scores (higher is better) for the candidates of one request.

        history: the user's item ids, oldest first. context keys (all optional):
        ``timestamp`` (request time, unix seconds; default now), ``retrieval_scores``
        (the index's scores for the candidates, in the same order; default: recomputed
        with the towers in the ranker's model directory).
        """
        ctx = context or {}
        raw_ts = ctx.get("timestamp")
        ts = int(raw_ts) if raw_ts is not None and np.isfinite(raw_ts) else int(time.time())
        cand = self.space.item_positions(candidate_item_ids)
        scores = ctx.get("retrieval_scores")
        if scores is None:
            scores = self._retrieval_scores(user_id, history, candidate_item_ids, ts)
        if self.order == "blend":
            hist = self.space.item_positions(list(history))
            i2i = item_item_scores(self.item_item, hist[hist >= 0], cand)
            weight = float(self.meta["blend_weight"])
            return blend(np.asarray(scores, np.float64), i2i, weight).astype(np.float32)
        req = Request(
            user_id=str(user_id),
            timestamp=ts,
            history=history,
            candidates=cand,
            scores=np.asarray(scores, dtype=np.float32),
        )
        pop = self.popularity[np.where(cand < 0, len(self.popularity) - 1, cand)]
        dense, uidx, iidx = self.space.transform(req, pop)
        return self.score_features(dense, uidx, iidx)

    def _retrieval_scores(
        self, user_id: str, history: Sequence[str], candidates: Sequence[str], ts: int
    ) -> np.ndarray:
        if self._retrieval is None:
            if self._model_dir is None:
                raise ValueError("retrieval_scores are required: no towers beside this ranker")
            from shortlist.models.two_tower import TwoTowerRetriever

            towers = TwoTowerRetriever.load(self._model_dir)
            emb = towers.item_vectors(towers.items)
            self._retrieval = (towers, dict(zip(towers.item_ids, emb, strict=True)))
        towers, emb = self._retrieval
        q = towers.query_vectors([str(user_id)], [list(history)], timestamps=[ts])[0]
        zero = np.zeros_like(q)
        return np.array([emb.get(str(c), zero) @ q for c in candidates], dtype=np.float32)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
