"""Data-parallel training of the towers: the process group, the shards and the launch.

`shortlist train-towers` with `towers.processes` > 1 starts that many copies of itself
through `torch.distributed.run` (torchrun). Each copy is a rank of one process group:
gloo on CPU, NCCL where CUDA is available (`towers.backend: auto`), on the device its
LOCAL_RANK names. The towers are wrapped in DistributedDataParallel, so every step's
gradients are averaged over the ranks and the replicas stay identical; everything that
decides or writes (validation, early stopping, the refit, model files, MLflow, plots)
happens on rank 0, and its decisions are broadcast so that every rank stops together.

A process is a rank of a distributed run when torchrun's environment says so (WORLD_SIZE
and RANK are set); the stage launches torchrun only when it is not one already, so the
same entry point runs under a launcher of the user's own (`torchrun ... -m shortlist
train-towers ...`) too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from torch import nn

#: How long a collective waits for the slowest rank. The other ranks wait at the stop
#: broadcast while rank 0 validates, and at the report's while it writes and logs: on a
#: large catalog that takes far longer than the default 30 minutes would allow.
GROUP_TIMEOUT = timedelta(hours=4)


def in_launched_process() -> bool:
    """True in a process started by torchrun (or any launcher that sets its environment)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE"))


def resolve_backend(backend: str, cuda: bool | None = None) -> str:
    """`auto` -> nccl where CUDA is available, gloo otherwise; nccl without CUDA is an
    error here rather than a hang or a cryptic failure inside the first collective."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if backend == "auto":
        return "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise ValueError("towers.backend nccl needs CUDA, which is not available here")
    return backend


@dataclass
class Ranks:
    """Where this process stands in a training run: its rank among `world` processes and
    the device it trains on. The single-process run is rank 0 of 1 on the CPU, and every
    collective below is then a no-op, so the one training loop serves both."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this object initialised the process group (and ends it)

    @property
    def distributed(self) -> bool:
        return self.world > 1 or self.owns_group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, net: nn.Module) -> nn.Module:
        """The module whose forward computes the loss: `net` itself on one process, the
        DDP wrapper of `BatchLoss(net)` on several (DDP all-reduces gradients only for
        work done through its forward)."""
        if not self.distributed:
            return net
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # The genre lookup buffer is fixed: synced once at the start, not before each step.
        return DistributedDataParallel(
            BatchLoss(net),
            device_ids=ids,
            output_device=ids[0] if ids else None,
            forward_sync_buffers=False,
        )

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a picklable value)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._collective_device())
        return box[0]

    def mean(self, total: float, count: int) -> float:
        """The mean over all ranks of values whose sum here is `total` over `count`."""
        if not self.distributed:
            return total / count if count else float("nan")
        import torch.distributed as dist

        t = torch.tensor(
            [total, float(count)], dtype=torch.float64, device=self._collective_device()
        )
        dist.all_reduce(t)
        return float(t[0] / t[1]) if t[1] else float("nan")

    def close(self) -> None:
        """End the process group if this object started it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False

    def _collective_device(self) -> torch.device:
        # NCCL moves only CUDA tensors; gloo only CPU ones.
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def setup(backend: str = "auto") -> Ranks:
    """This process's place in the run: rank 0 of 1 on the CPU outside torchrun (the
    single-process path, untouched); inside it, a rank of the process group (initialised
    here unless the caller already did) on cuda:LOCAL_RANK where CUDA is available, else
    on the CPU."""
    if not in_launched_process():
        return Ranks()
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    name = resolve_backend(backend, cuda)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(
            backend=name, timeout=GROUP_TIMEOUT, device_id=device if cuda else None
        )
        owns = True
    return Ranks(dist.get_rank(), dist.get_world_size(), device, owns)


class BatchLoss(nn.Module):
    """The towers' batch loss as a module's forward, which DDP needs to wrap: the towers'
    own forwards are `item_forward` and `query_forward`, called by the loss."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        item_feats: dict[str, torch.Tensor],
        log_q: torch.Tensor | None,
        temperature: float,
    ) -> torch.Tensor:
        from shortlist.models.objective import batch_loss

        return batch_loss(self.net, batch, item_feats, log_q, temperature)


def shard(rows: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank `rank`'s share of one global batch of example rows: every world-th row from
    the rank-th on (DistributedSampler's interleaving). Over the ranks the shares are
    disjoint, cover `rows` exactly, and differ in size by at most one."""
    return rows[rank::world]


def global_batches(n: int, batch_size: int, world: int) -> list[tuple[int, int]]:
    """(start, stop) of the global batches of an epoch over n examples in the order of the
    epoch's permutation: batch_size examples each (the last one shorter), so a run on any
    number of processes takes the same steps over the same examples as one process.

    A batch too short to give every rank two rows is skipped on all of them (one process
    skips a batch of one row the same way): a rank with a single row has no in-batch
    negative, and every rank must take the same number of steps, as DDP's all-reduce
    waits for all of them.
    """
    out = []
    for s in range(0, n, batch_size):
        stop = min(n, s + batch_size)
        if stop - s >= 2 * world:
            out.append((s, stop))
    return out


def launch_command(processes: int, module: str, args: Sequence[str]) -> list[str]:
    """The command that runs `python -m module args` as `processes` ranks on this machine
    (torchrun's standalone rendezvous picks a free port on localhost)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        module,
        *args,
    ]
