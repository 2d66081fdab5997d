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
    """x0 * (W x + b) + x; with `rank` > 0, W = U V^T of that rank (DCN-v2's low-rank
    form: 2 * dim * rank multiply-adds per row instead of dim^2)."""

    def __init__(self, dim: int, rank: int = 0) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False) if rank else None
        self.linear = nn.Linear(rank or dim, dim)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x if self.down is None else self.down(x)) + x


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
        cross_rank: int = 0,
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
            "cross_rank": cross_rank,
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
        self.cross = nn.ModuleList(CrossLayer(d0, cross_rank) for _ in range(cross_layers))
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


class DCNEnsemble(nn.Module):
    """The mean logit of several DCNRankers sharing one feature space.

    Each member is trained with its own seed and its own early-stopping users
    (`shortlist.ranking.train.train_ranker`): the ranker learns from a few hundred
    requests, so a single network's order depends noticeably on its initialisation and on
    which users stopped it; averaging members removes that variance (bagging).
    """

    def __init__(self, members: list[DCNRanker]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.config: dict[str, Any] = {**members[0].config, "members": len(members)}
        self._packed: dict[str, Any] | None = None

    def train(self, mode: bool = True) -> DCNEnsemble:
        self._packed = None
        return super().train(mode)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self._packed = None
        return super().load_state_dict(*args, **kwargs)

    def _pack(self) -> dict[str, Any]:
        """The members' weights stacked per layer (member axis first), for `forward`."""

        def stack(get) -> torch.Tensor:
            return torch.stack([get(m).detach() for m in self.members])

        deep = [i for i, layer in enumerate(self.members[0].deep) if isinstance(layer, nn.Linear)]
        return {
            "user": stack(lambda m: m.user_emb.weight) if self.members[0].use_ids else None,
            "item": stack(lambda m: m.item_emb.weight) if self.members[0].use_ids else None,
            "cross": [
                (
                    stack(lambda m, k=k: m.cross[k].down.weight.T)
                    if self.members[0].cross[k].down is not None
                    else None,
                    stack(lambda m, k=k: m.cross[k].linear.weight.T),
                    stack(lambda m, k=k: m.cross[k].linear.bias[None, :]),
                )
                for k in range(len(self.members[0].cross))
            ],
            "deep": [
                (
                    stack(lambda m, i=i: m.deep[i].weight.T),
                    stack(lambda m, i=i: m.deep[i].bias[None, :]),
                )
                for i in deep
            ],
            "head": (
                stack(lambda m: m.head.weight.T),
                stack(lambda m: m.head.bias[None, :]),
            ),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DCNEnsemble:
        c = dict(config)
        n = int(c.pop("members"))
        return cls([DCNRanker.from_config(c) for _ in range(n)])

    def forward(
        self, dense: torch.Tensor, user_idx: torch.Tensor, item_idx: torch.Tensor
    ) -> torch.Tensor:
        if self.training:
            return torch.stack([m(dense, user_idx, item_idx) for m in self.members]).mean(0)
        # Inference: every layer of all members in one batched matmul. The members are
        # small, so one at a time is dominated by per-call overhead, not arithmetic.
        if self._packed is None:
            self._packed = self._pack()
        p = self._packed
        n_members = len(self.members)
        x0 = dense.expand(n_members, *dense.shape)
        if p["user"] is not None:
            x0 = torch.cat([x0, p["user"][:, user_idx], p["item"][:, item_idx]], dim=2)
        x = x0
        for down, w, b in p["cross"]:
            x = x0 * torch.baddbmm(b, x if down is None else torch.bmm(x, down), w) + x
        h = x0
        for w, b in p["deep"]:
            h = torch.relu(torch.baddbmm(b, h, w))
        w, b = p["head"]
        return torch.baddbmm(b, torch.cat([x, h], dim=2), w).mean(0).squeeze(1)


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """The network a saved ranker config describes (a single DCN or an ensemble)."""
    if "members" in config:
        return DCNEnsemble.from_config(config)
    return DCNRanker.from_config(config)


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
