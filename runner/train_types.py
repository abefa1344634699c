"""What the training loop (runner.train) takes and gives: its options, progress
updates, result and the stop it raises; apart so the loop's own file stays the loop."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from runner.checkpoint import Sink, State
from runner.rank_group import Group
from runner.tasks import EvalOutput, TaskStrategy


class TrainingStopped(Exception):
    """``should_stop`` said why (cancelled, shutdown, fenced); a checkpoint may be kept."""

    def __init__(self, reason: str, checkpoint_epoch: int | None = None) -> None:
        super().__init__(f"training stopped: {reason}")
        self.reason = reason
        self.checkpoint_epoch = checkpoint_epoch


@dataclass(frozen=True)
class ProgressUpdate:
    """After every step (``metrics`` empty) and at each epoch end (val metrics)."""

    epoch: int
    """1-based; ``epochs`` is the planned total (early stopping may end sooner)."""
    epochs: int
    step: int
    total_steps: int
    loss: float | None
    """The step's training loss, or the epoch's mean training loss at epoch end."""
    metrics: dict[str, float] = field(default_factory=dict)
    throughput: float | None = None
    """Training images per second over the current epoch."""
    eta_s: float | None = None
    epoch_end: bool = False


@dataclass(frozen=True)
class TrainOptions:
    workers: int = 0
    """DataLoader worker processes (0: batches are sliced in the training thread)."""
    compile: bool = False
    checkpointer: Sink | None = None
    """Rank 0's only, in a group (``runner.distributed`` relays it to the supervisor)."""
    resume: State | None = None
    initial_weights: dict[str, torch.Tensor] | None = None
    """The network's starting weights, resolved by the supervisor (a rank has no store)."""
    group: Group = field(default_factory=Group)
    """This process's training group (``runner.rank_group``): alone by default."""
    read_loss_late: bool | None = None
    """Read each step's loss once the next is queued (None: on CUDA, where reading
    waits for the device; on the CPU a step has run when it returns)."""


@dataclass
class TrainResult:
    model: nn.Module
    metrics: dict[str, float]
    """Validation metrics of the best epoch (whose weights ``model`` holds)."""
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float = 0.0
    strategy: TaskStrategy | None = None
    evaluation: EvalOutput | None = None
    """The best model's validation predictions, for the plots."""
    samples: np.ndarray | None = None
    """The first validation images (uint8), in the order of ``evaluation``."""
    example: torch.Tensor | None = None
    """A model-ready CPU input (normalised as in training), for the ONNX check."""
    resumed_from_epoch: int | None = None


@dataclass
class EpochMeter:
    """This pass's progress: its start, the samples it trained, the step not yet read."""

    epoch: int
    t0: float = field(default_factory=time.monotonic)
    seen: int = 0
    pending: tuple[torch.Tensor, int, int] | None = None
    """(loss, samples, step) of the last step queued."""
