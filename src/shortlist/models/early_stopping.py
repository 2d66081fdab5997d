"""Early stopping on a validation metric: keep the best epoch's weights, stop after
`patience` epochs in a row without improvement."""

from __future__ import annotations

import copy
import math
from typing import Any

from torch import nn


class EarlyStopping:
    """Tracks the best epoch by a metric where higher is better.

    `update` after each epoch stores a copy of the module's weights when the metric beats
    the best so far (strictly: a tie keeps the earlier, shorter training) and returns True
    once `patience` epochs in a row have not. Before any update `best_state` is None and
    `best_epoch` 0.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_epoch = 0
        self.best_metric = -math.inf
        self.best_state: dict[str, Any] | None = None
        self.stale = 0

    def update(self, epoch: int, metric: float, module: nn.Module) -> bool:
        """Record `epoch`'s metric for `module`'s current weights; True: stop now."""
        if metric > self.best_metric:
            self.best_epoch, self.best_metric = epoch, metric
            self.best_state = copy.deepcopy(module.state_dict())
            self.stale = 0
            return False
        self.stale += 1
        return self.stale >= self.patience
