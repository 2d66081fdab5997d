"""The ranking network: a DCN-v2 cross network beside a deep MLP (Wang et al. 2021).

Input x0 = [standardised dense features, user id embedding, item id embedding]. The cross
network learns explicit bounded-degree feature interactions, x_{l+1} = x0 * (W_l x_l + b_l)
+ x_l (full-rank W, the "DCN-M" form), which is where user x item crosses the towers cannot
express are modelled; the parallel MLP learns the implicit rest. Both outputs are
concatenated into one logit. Small enough (~50k weights on ml-100k) to score 200 candidates
in well under a millisecond on one thread.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class CrossLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class DCNRanker(nn.Module):
    """logit(user, item, context) from dense features and id embeddings."""

    def __init__(
        self,
        n_dense: int,
        n_users: int,
        n_items: int,
        *,
        id_dim: int = 16,
        cross_layers: int = 2,
        hidden_dims: list[int] | tuple[int, ...] = (128, 64),
        dropout: float = 0.1,
        use_ids: bool = True,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "n_dense": n_dense,
            "n_users": n_users,
            "n_items": n_items,
            "id_dim": id_dim,
            "cross_layers": cross_layers,
            "hidden_dims": list(hidden_dims),
            "dropout": dropout,
            "use_ids": use_ids,
        }
        self.use_ids = use_ids
        d0 = n_dense
        if use_ids:
            # Row 0 is the unknown / out-of-vocabulary id.
            self.user_emb = nn.Embedding(n_users + 1, id_dim)
            self.item_emb = nn.Embedding(n_items + 1, id_dim)
            nn.init.normal_(self.user_emb.weight, std=0.01)
            nn.init.normal_(self.item_emb.weight, std=0.01)
            d0 += 2 * id_dim
        self.cross = nn.ModuleList(CrossLayer(d0) for _ in range(cross_layers))
        layers: list[nn.Module] = []
        prev = d0
        for h in hidden_dims:
            layers += [nn.Linear(prev, h), nn.ReLU(), nn.Dropout(dropout)]
            prev = h
        self.deep = nn.Sequential(*layers)
        self.head = nn.Linear(d0 + prev, 1)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DCNRanker:
        c = dict(config)
        return cls(c.pop("n_dense"), c.pop("n_users"), c.pop("n_items"), **c)

    def forward(
        self, dense: torch.Tensor, user_idx: torch.Tensor, item_idx: torch.Tensor
    ) -> torch.Tensor:
        x0 = dense
        if self.use_ids:
            x0 = torch.cat([dense, self.user_emb(user_idx), self.item_emb(item_idx)], dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.head(torch.cat([x, self.deep(x0)], dim=1)).squeeze(1)


def weighted_logistic_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Covington et al. 2016: logistic loss with positives weighted by engagement.

    Positives carry their engagement (the rating on MovieLens, watch time elsewhere),
    negatives unit weight, so the learned odds approximate expected engagement. The sum is
    normalised by the total weight of the batch.
    """
    per_row = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (per_row * weights).sum() / weights.sum().clamp_min(1e-12)
