"""What one training process knows of its group (DESIGN.md §8, multi-GPU).

The loop (``runner.train``) asks its :class:`Group` four things, so that one
loop serves one process and N processes alike:

* ``shard``: this process's part of a global batch. Every rank draws the same
  global order from the recorded seed (the loop's generator, as in one process)
  and takes every N-th case of each global batch, as ``DistributedSampler`` does
  with a seeded permutation; unlike it, the order and the position within an
  epoch live in the checkpoint, so a resume continues mid-epoch exactly, with
  any number of processes;
* ``agree``: the stop reason rank 0 read, broadcast once per step, so every rank
  stops at the same step (a rank that stopped alone would hang its peers);
* ``mean_loss``: the global batch's mean loss and size (an all-reduce);
* ``from_main``: a value rank 0 computes (validation metrics), broadcast.

``wrap`` puts the network in ``DistributedDataParallel`` (gradients averaged
over the ranks: with shards weighted by their size, the step is the one the
whole global batch gives in one process), with ``SyncBatchNorm`` on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")
REASONS = ("", "cancelled", "shutdown", "fenced", "unverified", "stopped")
"""Stop reasons as the small integers that travel in the shared flag and broadcasts."""


def reason_code(reason: object) -> int:
    if not reason:
        return 0
    if isinstance(reason, str) and reason in REASONS:
        return REASONS.index(reason)
    return REASONS.index("stopped")


class Group:
    """One process alone: every question answers itself."""

    rank = 0
    world = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: np.ndarray) -> np.ndarray:
        return batch

    def agree(self, local: Callable[[], object]) -> object:
        return local()

    def mean_loss(self, loss: float, n: int) -> tuple[float, int]:
        return loss, n

    def from_main(self, compute: Callable[[], T]) -> T:
        return compute()

    def wrap(self, model: nn.Module, *, find_unused: bool) -> tuple[nn.Module, Any]:
        """``(model, net)``: state dicts come from ``model``, steps go through ``net``."""
        return model, model


class ProcessGroup(Group):
    """Rank ``rank`` of ``world`` in the default torch.distributed process group."""

    def __init__(self, rank: int, world: int, device: torch.device) -> None:
        self.rank, self.world, self.device = rank, world, device
        self.comm = device if device.type == "cuda" else torch.device("cpu")
        """Where collective tensors live (NCCL needs them on the GPU)."""

    def shard(self, batch: np.ndarray) -> np.ndarray:
        return batch[self.rank::self.world]

    def agree(self, local: Callable[[], object]) -> object:
        code = torch.tensor([reason_code(local()) if self.rank == 0 else 0], device=self.comm)
        dist.broadcast(code, 0)
        return REASONS[int(code.item())] or None

    def mean_loss(self, loss: float, n: int) -> tuple[float, int]:
        t = torch.tensor([loss * n, float(n)], dtype=torch.float64, device=self.comm)
        dist.all_reduce(t)
        return float(t[0] / t[1]), int(t[1].item())

    def from_main(self, compute: Callable[[], T]) -> T:
        box: list[Any] = [compute() if self.rank == 0 else None]
        dist.broadcast_object_list(box, 0, device=self.comm)
        return box[0]  # type: ignore[no-any-return]

    def wrap(self, model: nn.Module, *, find_unused: bool) -> tuple[nn.Module, Any]:
        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)
        return model, net
