"""The two-tower model behind the evaluation protocol (`shortlist.eval.protocol.Recommender`).

`fit` trains with `train_two_tower` (early stopping on the validation part); `score` is the
exact inner product of query vectors and item vectors over the whole item table, i.e.
what a flat FAISS index over `item_vectors()` would return. Histories and request context
come from the interactions given to `fit`: by default train and validation, everything
known before a test period (the harness excludes the same pairs from the ranking);
`history="train"` uses the train part only (for scoring the validation period itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from shortlist.config import Params
from shortlist.data import schema


class TwoTowerRecommender:
    def __init__(
        self,
        params: Params,
        *,
        seed: int | None = None,
        name: str = "two_tower",
        history: Literal["train", "train+validation"] = "train+validation",
        progress: bool = False,
        mlflow_run: bool = False,
    ) -> None:
        self.params = params
        self.seed = seed
        self.name = name
        self.history = history
        self.progress = progress
        self.mlflow_run = mlflow_run
        self.model = None
        self.report: dict = {}
        self.item_ids = np.zeros(0, dtype=object)

    @classmethod
    def from_model(
        cls,
        params: Params,
        model,
        interactions: pd.DataFrame,
        items: pd.DataFrame,
        users: pd.DataFrame | None,
        name: str = "two_tower",
    ) -> TwoTowerRecommender:
        """Wrap an already trained TwoTowerRetriever (e.g. loaded from a model dir)."""
        rec = cls(params, name=name)
        rec._attach(model, interactions, items, users)
        return rec

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str,
        params: Params,
        *,
        interactions: pd.DataFrame,
        items: pd.DataFrame,
        users: pd.DataFrame | None = None,
        name: str = "two_tower",
    ) -> TwoTowerRecommender:
        """Load a saved model; `interactions` (all known before the evaluated period)
        supply histories and context."""
        from shortlist.models.two_tower import TwoTowerRetriever

        model = TwoTowerRetriever.load(model_dir)
        return cls.from_model(params, model, interactions, items, users, name=name)

    def fit(
        self,
        train: pd.DataFrame,
        validation: pd.DataFrame,
        items: pd.DataFrame,
        users: pd.DataFrame,
    ) -> TwoTowerRecommender:
        from shortlist.models.fit import train_two_tower

        model, self.report = train_two_tower(
            self.params,
            train,
            validation,
            items,
            users,
            seed=self.seed,
            progress=self.progress,
            mlflow_run=self.mlflow_run,
        )
        known = train if self.history == "train" else pd.concat([train, validation])
        self._attach(model, known, items, users)
        return self

    def _attach(self, model, interactions, items, users) -> None:
        self.model = model
        self.interactions = interactions
        self.users = users
        self.items = items.drop_duplicates(schema.ITEM_ID).reset_index(drop=True)
        self.item_ids = self.items[schema.ITEM_ID].astype(str).to_numpy()
        self._item_vectors = model.item_vectors(self.items)
        self._by_user: UserHistories | None = None

    def item_vectors(self) -> np.ndarray:
        """(n_items, d or d+1) in `item_ids` order; inner product with query_vectors."""
        return self._item_vectors

    def query_vectors(self, user_ids: Sequence[str]) -> np.ndarray:
        ids = [str(u) for u in user_ids]
        if self._by_user is None:  # once: a block of users then costs its own rows only
            self._by_user = UserHistories(self.interactions)
        histories = self._by_user.histories(ids, self.model.history_len)
        timestamps = self._by_user.last_timestamps(ids)
        return self.model.query_vectors(ids, histories, self.users, timestamps)

    def score(self, user_ids: Sequence[str]) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("fit the recommender before scoring")
        return (self.query_vectors(user_ids) @ self._item_vectors.T).astype(np.float32)


class UserHistories:
    """Interactions sorted by (user, timestamp, item) with each user's row span, so the
    history and last time of any user are a slice: the same values as
    `two_tower.histories_from` and `TwoTowerRetriever.last_timestamps`, without a pass
    over every interaction per block of evaluated users."""

    def __init__(self, interactions: pd.DataFrame) -> None:
        u = interactions[schema.USER_ID].astype(str).to_numpy()
        i = interactions[schema.ITEM_ID].astype(str).to_numpy()
        t = interactions[schema.TIMESTAMP].to_numpy()
        # Sorted factorisation: the codes order as the strings do.
        user_codes, users = pd.factorize(u, sort=True)
        order = np.lexsort((pd.factorize(i, sort=True)[0], t, user_codes))
        self.users = pd.Index(users)
        self.ptr = np.searchsorted(user_codes[order], np.arange(len(users) + 1))
        self.items = i[order]
        self.times = t[order]

    def histories(self, user_ids: Sequence[str], n: int) -> list[list[str]]:
        """The last n item ids of each user (oldest first); [] for a user without any."""
        pos = self.users.get_indexer(list(user_ids))
        return [
            self.items[max(self.ptr[p + 1] - n, self.ptr[p]) : self.ptr[p + 1]].tolist()
            if p >= 0
            else []
            for p in pos
        ]

    def last_timestamps(self, user_ids: Sequence[str]) -> np.ndarray:
        """Each user's latest interaction time; NaN for a user without any."""
        pos = self.users.get_indexer(list(user_ids))
        if not len(self.times):
            return np.full(len(pos), np.nan)
        last = self.times[self.ptr[np.maximum(pos, 0) + 1] - 1].astype(float)
        return np.where(pos >= 0, last, np.nan)
