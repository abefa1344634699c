"""The training loop (DESIGN.md §8): prepared arrays in, best-epoch model out.

Transport-free and synchronous: the caller rate-limits ``on_progress`` and
turns ``should_stop`` into cancellation or fencing. The whole dataset is a
uint8 tensor in memory (on the GPU when it fits), so batches are index
slices with no DataLoader overhead; augmentation runs on the device.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from torch import nn

from infra.imaging.transforms import per_channel
from infra.store import ObjectStore
from runner.data import PreparedData
from runner.metrics import classification_metrics
from runner.model import build_model, head_prefixes
from schemas.spec import TrainingSpec
from schemas.tasks import Hyperparameters

ON_DEVICE_MAX_BYTES = 2 * 1024**3
EVAL_BATCH = 128


class TrainingStopped(Exception):
    """``should_stop`` returned True: cancelled, or a newer attempt owns the task."""


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


@dataclass
class TrainResult:
    model: nn.Module
    metrics: dict[str, float]
    """Validation metrics of the best epoch (whose weights ``model`` holds)."""
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float = 0.0


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG the loop touches; the returned generator drives shuffling and augmentation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class _Batches:
    """Index-sliced batches from the in-memory uint8 stack, normalised on the device."""

    def __init__(self, data: PreparedData, spec: TrainingSpec, device: torch.device) -> None:
        keep = device.type == "cuda" and data.x.nbytes <= ON_DEVICE_MAX_BYTES
        self.device = device
        self.x = torch.from_numpy(data.x)
        self.y = torch.from_numpy(data.y)
        if keep:
            self.x, self.y = self.x.to(device), self.y.to(device)
        self.pin = device.type == "cuda" and not keep
        c = data.x.shape[1]
        prep = spec.preprocessing
        self.mean = _channel_vector(prep.mean, c, device)
        self.std = _channel_vector(prep.std, c, device)
        self.channels_last = device.type == "cuda"

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch in [0, 1] on the device (augment, then ``normalise``)."""
        idx = idx.to(self.x.device)
        xb, yb = self.x[idx], self.y[idx]
        if self.pin:  # page-locked batch, so the copy below really is asynchronous
            xb, yb = xb.pin_memory(), yb.pin_memory()
        xb = xb.to(self.device, non_blocking=True).float().div_(255.0)
        return xb, yb.to(self.device, non_blocking=True)

    def normalise(self, xb: torch.Tensor) -> torch.Tensor:
        xb = (xb - self.mean) / self.std
        return xb.contiguous(memory_format=torch.channels_last) if self.channels_last else xb


def _channel_vector(values: tuple[float, ...], c: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(per_channel(values, c), dtype=torch.float32, device=device).view(1, c, 1, 1)


def augment(xb: torch.Tensor, level: str, gen: torch.Generator) -> torch.Tensor:
    """Random flip + shift (light), plus rotation, scale and contrast (strong), per sample.

    One affine ``grid_sample`` does it all, on whatever device the batch is on;
    random draws come from the CPU generator so runs repeat exactly.
    """
    if level == "none":
        return xb
    b = xb.shape[0]
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    shift = (torch.rand(b, 2, generator=gen) - 0.5) * 0.16
    angle = torch.zeros(b)
    scale = torch.ones(b)
    if level == "strong":
        angle = (torch.rand(b, generator=gen) - 0.5) * math.radians(30)
        scale = 0.85 + torch.rand(b, generator=gen) * 0.3
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], 1),
            torch.stack([sin * flip, cos, shift[:, 1]], 1),
        ],
        1,
    ).to(xb.device, xb.dtype)
    grid = F.affine_grid(theta, list(xb.shape), align_corners=False)
    out = F.grid_sample(xb, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if level == "strong":
        gain = (0.9 + torch.rand(b, 1, 1, 1, generator=gen) * 0.2).to(xb.device)
        out = (out * gain).clamp_(0.0, 1.0)
    return out


def _loss_fn(spec: TrainingSpec, data: PreparedData, device: torch.device) -> nn.Module:
    """Cross-entropy for single-label; BCE per label for multi-label or when asked."""
    hp = spec.hyperparameters
    train_y = torch.from_numpy(data.y[data.indices("train")])
    k = len(data.classes)
    if data.label_mode == "single_label" and hp.loss == "cross_entropy":
        weight = None
        if hp.class_weighting == "balanced":
            counts = torch.bincount(train_y.long(), minlength=k).float().clamp(min=1)
            weight = (counts.sum() / (k * counts)).to(device)
        return nn.CrossEntropyLoss(weight=weight)
    pos_weight = None
    if hp.class_weighting == "balanced":
        onehot = F.one_hot(train_y.long(), k).float() if train_y.ndim == 1 else train_y.float()
        pos = onehot.sum(0).clamp(min=1)
        pos_weight = ((onehot.shape[0] - pos).clamp(min=1) / pos).to(device)
    return _OneHotBCE(pos_weight, k)


class _OneHotBCE(nn.Module):
    """BCE-with-logits that accepts class indices too (single-label trained with BCE)."""

    def __init__(self, pos_weight: torch.Tensor | None, k: int) -> None:
        super().__init__()
        self.inner = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        self.k = k

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 1:
            target = F.one_hot(target.long(), self.k)
        return self.inner(logits, target.to(logits.dtype))


def _optimizer(model: nn.Module, hp: Hyperparameters) -> torch.optim.Optimizer:
    """No weight decay on norms and biases (timm's grouping)."""
    groups = param_groups_weight_decay(model, hp.weight_decay)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=hp.learning_rate, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=hp.learning_rate)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine to zero (or constant), per optimizer step."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze everything but the classifier head (``freeze_backbone_epochs``)."""
    heads = head_prefixes(model)
    for name, p in model.named_parameters():
        p.requires_grad_(not frozen or not heads or name.startswith(heads))


def _batch_plan(n: int, batch_size: int) -> int:
    """Batches per epoch; a last batch of one sample is dropped (BatchNorm needs two)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 else 0)


@dataclass
class _Loop:
    """Mutable state of one run, so each phase is a short method."""

    spec: TrainingSpec
    data: PreparedData
    device: torch.device
    on_progress: Callable[[ProgressUpdate], None]
    should_stop: Callable[[], bool]
    model: nn.Module
    batches: _Batches
    gen: torch.Generator
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    started: float = field(default_factory=time.monotonic)
    step: int = 0

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.spec.hyperparameters.epochs

    def autocast(self) -> torch.autocast:
        enabled = self.device.type == "cuda" and self.spec.hyperparameters.mixed_precision
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def eta(self) -> float | None:
        if self.step == 0:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / self.step * (self.total_steps - self.step)

    def train_epoch(self, epoch: int) -> float:
        """One pass over the train split; returns the mean training loss."""
        hp = self.spec.hyperparameters
        self.model.train()
        _set_backbone_frozen(self.model, epoch <= hp.freeze_backbone_epochs)
        train_idx = torch.from_numpy(self.data.indices("train"))
        order = train_idx[torch.randperm(len(train_idx), generator=self.gen)]
        t0, seen, total_loss = time.monotonic(), 0, 0.0
        for b in range(self.steps_per_epoch):
            if self.should_stop():
                raise TrainingStopped(f"stopped at epoch {epoch}, step {self.step}")
            idx = order[b * hp.batch_size : (b + 1) * hp.batch_size]
            loss = self.train_step(idx)
            seen += len(idx)
            total_loss += loss * len(idx)
            rate = seen / max(time.monotonic() - t0, 1e-9)
            self.on_progress(
                ProgressUpdate(
                    epoch, hp.epochs, self.step, self.total_steps, loss, {}, rate, self.eta()
                )
            )
        return total_loss / max(seen, 1)

    def train_step(self, idx: torch.Tensor) -> float:
        hp = self.spec.hyperparameters
        xb, yb = self.batches.get(idx)
        xb = self.batches.normalise(augment(xb, hp.augmentation, self.gen))
        with self.autocast():
            logits = self.model(xb)
        loss = self.loss_fn(logits.float(), yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if hp.grad_clip_norm > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), hp.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return float(loss.detach())

    @torch.inference_mode()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        idx = torch.from_numpy(self.data.indices("val"))
        logits, targets = [], []
        for start in range(0, len(idx), EVAL_BATCH):
            xb, yb = self.batches.get(idx[start : start + EVAL_BATCH])
            with self.autocast():
                logits.append(self.model(self.batches.normalise(xb)).float().cpu())
            targets.append(yb.cpu())
        return classification_metrics(
            torch.cat(logits), torch.cat(targets), self.data.label_mode, self.data.classes
        )


def _build_loop(
    spec: TrainingSpec,
    data: PreparedData,
    device: torch.device,
    on_progress: Callable[[ProgressUpdate], None],
    should_stop: Callable[[], bool],
    store: ObjectStore | None,
) -> _Loop:
    hp = spec.hyperparameters
    gen = seed_everything(hp.seed)
    model = build_model(spec.model, store).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    n_train = len(data.indices("train"))
    steps = _batch_plan(n_train, hp.batch_size)
    if steps == 0 or len(data.indices("val")) == 0:
        raise ValueError(f"need >= 2 training and >= 1 validation cases (train={n_train})")
    optimizer = _optimizer(model, hp)
    total, warmup = steps * hp.epochs, steps * hp.warmup_epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, hp.schedule)
    )
    return _Loop(
        spec,
        data,
        device,
        on_progress,
        should_stop,
        model,
        _Batches(data, spec, device),
        gen,
        _loss_fn(spec, data, device),
        optimizer,
        scheduler,
        steps,
    )


def _score(metrics: dict[str, float]) -> tuple[float, float]:
    """Early-stopping monitor: val AUC (where defined), ties broken by the lower val loss."""
    return (metrics.get("auc", 0.0), -metrics["val_loss"])


def train(
    spec: TrainingSpec,
    data: PreparedData,
    device: torch.device,
    on_progress: Callable[[ProgressUpdate], None],
    should_stop: Callable[[], bool],
    *,
    store: ObjectStore | None = None,
) -> TrainResult:
    """Train, evaluate every epoch, stop early on a stalled val AUC, keep the best epoch."""
    hp = spec.hyperparameters
    loop = _build_loop(spec, data, device, on_progress, should_stop, store)
    history: list[dict[str, float]] = []
    best: tuple[tuple[float, float], int, dict[str, float], dict[str, torch.Tensor]] | None = None
    for epoch in range(1, hp.epochs + 1):
        t0 = time.monotonic()
        lr = loop.lr()
        train_loss = loop.train_epoch(epoch)
        metrics = loop.evaluate()
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                **metrics,
                "lr": lr,
                "seconds": time.monotonic() - t0,
            }
        )
        on_progress(
            ProgressUpdate(
                epoch,
                hp.epochs,
                loop.step,
                loop.total_steps,
                train_loss,
                metrics,
                None,
                loop.eta(),
                epoch_end=True,
            )
        )
        if best is None or _score(metrics) > best[0]:
            state = {k: v.detach().to("cpu", copy=True) for k, v in loop.model.state_dict().items()}
            best = (_score(metrics), epoch, metrics, state)
        elif hp.early_stopping_patience and epoch - best[1] >= hp.early_stopping_patience:
            break
    assert best is not None  # epochs >= 1 by the schema
    loop.model.load_state_dict(best[3])
    model = loop.model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    return TrainResult(model, dict(best[2]), history, best[1], time.monotonic() - loop.started)
