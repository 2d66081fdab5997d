"""What the evaluation harness needs from a model: scores over the whole catalog.

Every recommender evaluated by Shortlist, the two-tower model and each baseline alike,
implements this protocol, so they are compared by one harness on the same full ranking
(never sampled negatives). The harness, not the model, removes each user's training items
and takes the top K.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd


class Recommender(Protocol):
    name: str
    #: Catalog order of the score columns (original item ids as strings).
    item_ids: np.ndarray

    def fit(
        self,
        train: pd.DataFrame,
        validation: pd.DataFrame,
        items: pd.DataFrame,
        users: pd.DataFrame,
    ) -> Recommender:
        """Learn from train; tune hyperparameters or stop early on validation only."""
        ...

    def score(self, user_ids: Sequence[str]) -> np.ndarray:
        """Scores (len(user_ids), len(item_ids)), float32, higher is better.

        Users unknown at fit time still get a row (a fallback such as popularity).
        """
        ...
