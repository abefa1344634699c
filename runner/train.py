"""The training loop (DESIGN.md §8): prepared arrays in, best-epoch model out.

Transport-free and synchronous: the caller rate-limits ``on_progress`` and
turns ``should_stop`` into cancellation, shutdown or fencing. One loop for
every task type; what differs (targets, loss, metrics) is the strategy's
(``runner.tasks``). A full checkpoint is written after every epoch and when
the run is told to stop, and a run given one continues exactly where it was (bit for
bit on the CPU; on CUDA up to the rounding of the kernels cuDNN times and picks in each
process, ``cudnn.benchmark``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from imaging.transforms import per_channel
from infra.errors import PermanentError
from infra.store import ObjectStore
from runner.checkpoint import Sink, State, rng_state, set_rng_state
from runner.data import PreparedData
from runner.loader import BatchSource, epoch_order
from runner.model import build_model
from runner.pe_metrics import exam_scores
from runner.rank_group import Group
from runner.recipe import (
    batch_plan,
    cpu_state,
    load_optimizer_state,
    lr_factor,
    optimizer_for,
    precision,
    seed_everything,
    set_backbone_frozen,
)
from runner.tasks import EvalOutput, TaskStrategy, strategy_for
from runner.tasks.base import augment
from runner.train_types import (
    EpochMeter,
    ProgressUpdate,
    TrainingStopped,
    TrainOptions,
    TrainResult,
)
from schemas.spec import TrainingSpec

__all__ = ["ProgressUpdate", "TrainOptions", "TrainResult", "TrainingStopped", "augment",
           "lr_factor", "seed_everything", "train"]

EVAL_BATCH = 64
NONFINITE_IN_ROW_MAX = 10
"""fp16 steps in a row whose loss may be non-finite (skipped by the grad scaler)."""
SAMPLES = 8


_precision = precision  # the name bench/bench_train.py imports


@dataclass
class _Loop:
    """Mutable state of one run, so each phase is a short method (and one checkpoint)."""

    spec: TrainingSpec
    data: PreparedData
    device: torch.device
    on_progress: Callable[[ProgressUpdate], None]
    should_stop: Callable[[], object]
    model: nn.Module
    net: Callable[..., Any]
    """``model``, or its ``torch.compile`` wrapper: state dicts always come from ``model``."""
    strategy: TaskStrategy
    source: BatchSource
    gen: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    checkpointer: Sink | None = None
    group: Group = field(default_factory=Group)
    eval_net: Callable[..., Any] | None = None
    """What evaluation runs (never the DDP wrapper: only rank 0 evaluates)."""
    read_loss_late: bool = False
    started: float = field(default_factory=time.monotonic)
    step: int = 0
    start_step: int = 0
    epoch: int = 0
    """Completed epochs."""
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    bad_epochs: int = 0
    order: torch.Tensor | None = None
    """This epoch's shuffled train indices; None between epochs."""
    batch_index: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    epoch_lr: float = 0.0
    norms: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    nonfinite_in_row: int = 0

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.spec.hyperparameters.epochs

    def autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                              enabled=self.amp_dtype is not None)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def eta(self) -> float | None:
        done = self.step - self.start_step
        if done <= 0:
            return None
        return (time.monotonic() - self.started) / done * (self.total_steps - self.step)

    def normalise(self, xb: torch.Tensor) -> torch.Tensor:
        if not self.strategy.normalise_input:
            return xb
        mean, std = self._mean_std(xb.shape[1], xb.device)
        xb = (xb - mean) / std
        if self.device.type == "cuda" and self.strategy.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb

    def _mean_std(self, c: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Made once: a tensor built on a GPU from a list is a copy that waits for the queue."""
        key = (c, str(device))
        if key not in self.norms:
            prep = self.spec.preprocessing
            self.norms[key] = (
                torch.tensor(per_channel(prep.mean, c), device=device).view(1, c, 1, 1),
                torch.tensor(per_channel(prep.std, c), device=device).view(1, c, 1, 1))
        return self.norms[key]

    # --- training -------------------------------------------------------------
    def train_epoch(self, epoch: int) -> float:
        """One pass over the train split (or its rest, when resumed); the mean training loss.

        With ``read_loss_late`` a step's loss is read (and reported) once the next
        step is queued: reading it waits for the GPU, and waiting before queuing left
        the GPU idle while the next step was launched. Before a stop the last step is
        settled, so a checkpoint's sums cover every step it counts.
        """
        hp = self.spec.hyperparameters
        if self.order is None:
            self.order = epoch_order(self.data, self.gen)  # shard by shard when streaming
            self.batch_index, self.loss_sum, self.seen, self.epoch_lr = 0, 0.0, 0, self.lr()
        self.model.train()
        set_backbone_frozen(self.model, epoch <= hp.freeze_backbone_epochs)
        bs, group = hp.batch_size, self.group
        whole = [self.order[b * bs:(b + 1) * bs].numpy()
                 for b in range(self.batch_index, self.steps_per_epoch)]
        meter = EpochMeter(epoch)
        for (xb, targets), batch in zip(self.source.batches([group.shard(b) for b in whole]),
                                        whole, strict=True):
            reason = self.should_stop()
            if reason:
                self.settle(meter)
                self.stop(reason)
            # a shard's mean loss weighted by its share: DDP's average is the batch's mean
            weight = xb.shape[0] * group.world / len(batch) if group.world > 1 else None
            loss = self.train_step(xb, targets, weight)
            self.batch_index += 1
            self.settle(meter)  # the previous step's, now that this one is queued
            meter.pending = (loss, xb.shape[0], self.step)
            if not self.read_loss_late:
                self.settle(meter)
        self.settle(meter)
        if self.seen == 0:  # fp16: every step of the epoch skipped
            raise PermanentError("training_diverged", f"no step of epoch {epoch} had a finite "
                                 "training loss: the run diverged; lower "
                                 f"hyperparameters.learning_rate (now {self.lr():g})")
        self.order = None
        return self.loss_sum / max(self.seen, 1)

    def settle(self, meter: EpochMeter) -> None:
        """Read the pending step's loss, add it to the epoch's sums and report the step."""
        if meter.pending is None:
            return
        loss_t, n_here, step = meter.pending
        meter.pending = None
        loss, n = self.group.mean_loss(float(loss_t), n_here)
        hp = self.spec.hyperparameters
        rate = (meter.seen + n) / max(time.monotonic() - meter.t0, 1e-9)
        if not math.isfinite(loss):
            self.skip_or_fail(loss, step, meter.epoch)  # fp16: the scaler skipped the update
            self.on_progress(ProgressUpdate(meter.epoch, hp.epochs, step, self.total_steps,
                                            None, {}, rate, self.eta()))
            return
        self.nonfinite_in_row = 0
        self.seen, meter.seen = self.seen + n, meter.seen + n
        self.loss_sum += loss * n
        self.on_progress(ProgressUpdate(meter.epoch, hp.epochs, step, self.total_steps, loss,
                                        {}, rate, self.eta()))

    def skip_or_fail(self, loss: float, step: int, epoch: int) -> None:
        """A non-finite loss. In bf16 or fp32 every later step would be as lost: the run
        fails at once, saying why. In fp16 the grad scaler skips the step's update and
        lowers its scale, so a few in a row are an overflow it recovers from; the step is
        left out of the epoch's sums."""
        self.nonfinite_in_row += 1
        if self.scaler.is_enabled() and self.nonfinite_in_row <= NONFINITE_IN_ROW_MAX:
            return
        also = (f" for {self.nonfinite_in_row} steps in a row (fp16, the grad scaler did not "
                "recover)") if self.scaler.is_enabled() else ""
        raise PermanentError("training_diverged", f"the training loss is {loss} at step "
                             f"{step} (epoch {epoch}){also}: the run diverged; lower "
                             f"hyperparameters.learning_rate (now {self.lr():g})")

    def train_step(self, xb: torch.Tensor, targets: Any,
                   weight: float | None = None) -> torch.Tensor:
        """Queue one step; its (detached) loss is returned unread."""
        hp, strat = self.spec.hyperparameters, self.strategy
        targets = strat.targets_to_device(targets)
        xb, targets = strat.augment(xb, targets, hp.augmentation, self.gen)
        xb = self.normalise(xb)
        with self.autocast():
            loss = strat.loss(self.net, xb, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss if weight is None else loss * weight).backward()
        if hp.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), hp.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return loss.detach()

    def stop(self, reason: object) -> None:
        """Keep a checkpoint of exactly this position (unless fenced), then stop."""
        why = reason if isinstance(reason, str) else "stopped"
        ckpt = self.checkpointer
        if ckpt is not None and why != "fenced":
            ckpt.save(self.state())
        raise TrainingStopped(why, ckpt.saved_epoch if ckpt is not None else None)

    # --- evaluation -----------------------------------------------------------
    @torch.inference_mode()
    def collect(self, idx: np.ndarray) -> EvalOutput:
        self.model.eval()
        chunks = [idx[s:s + EVAL_BATCH] for s in range(0, len(idx), EVAL_BATCH)]
        preds, targets = [], []
        net = self.eval_net or self.net
        for xb, t in self.source.batches(chunks):
            with self.autocast():
                preds.append(self.strategy.predict(net, self.normalise(xb), t))
            targets.append(t)
        return self.strategy.evaluate(preds, targets)

    def evaluate(self) -> dict[str, float]:
        """Rank 0 evaluates; in a group, the others get its metrics (the same decisions)."""
        return self.group.from_main(lambda: self.collect(self.data.indices("val")).metrics)

    # --- checkpoints ----------------------------------------------------------
    def state(self) -> State:
        return {
            "epoch": self.epoch, "step": self.step, "order": self.order,
            "batch_index": self.batch_index, "loss_sum": self.loss_sum, "seen": self.seen,
            "epoch_lr": self.epoch_lr, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(self.gen),
            "history": self.history, "best": self.best, "bad_epochs": self.bad_epochs,
        }

    def restore(self, st: State) -> None:
        self.model.load_state_dict(st["model"])
        load_optimizer_state(self.optimizer, st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        set_rng_state(st["rng"], self.gen)
        self.epoch, self.step, self.start_step = st["epoch"], st["step"], st["step"]
        self.order, self.batch_index = st["order"], st["batch_index"]
        self.loss_sum, self.seen, self.epoch_lr = st["loss_sum"], st["seen"], st["epoch_lr"]
        self.history, self.best, self.bad_epochs = st["history"], st["best"], st["bad_epochs"]
        if self.checkpointer is not None:
            self.checkpointer.saved_epoch = self.epoch

    def end_epoch(self, epoch: int, train_loss: float, metrics: dict[str, float],
                  seconds: float) -> bool:
        """Record the epoch, track the best, checkpoint; True when early stopping ends the run."""
        hp = self.spec.hyperparameters
        self.history.append({"epoch": epoch, "train_loss": train_loss, **metrics,
                             "lr": self.epoch_lr, "seconds": seconds})
        self.on_progress(ProgressUpdate(epoch, hp.epochs, self.step, self.total_steps, train_loss,
                                        metrics, None, self.eta(), epoch_end=True))
        self.epoch = epoch
        score = self.strategy.score(metrics)
        if self.best is None or score > tuple(self.best["score"]):
            self.best = {"score": score, "epoch": epoch, "metrics": dict(metrics),
                         "state": cpu_state(self.model)}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if self.checkpointer is not None:
            self.checkpointer.save(self.state())
        patience = hp.early_stopping_patience
        return bool(patience) and epoch - int(self.best["epoch"]) >= patience


def _build_loop(spec: TrainingSpec, data: PreparedData, device: torch.device,
                on_progress: Callable[[ProgressUpdate], None], should_stop: Callable[[], object],
                store: ObjectStore | None, options: TrainOptions) -> _Loop:
    hp, group = spec.hyperparameters, options.group
    gen = seed_everything(hp.seed)
    if options.initial_weights is None:
        model = build_model(spec.model, store)
    else:  # the same architecture (and init draws), then the supervisor's weights
        model = build_model(spec.model.model_copy(update={
            "pretrained": False, "weights_key": None, "weights_sha256": None}))
        model.load_state_dict(options.initial_weights)
    model = model.to(device)
    strategy = strategy_for(spec, data, device)
    if device.type == "cuda" and strategy.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        # Batches keep one shape for the whole run: cuDNN's timed choice of convolution
        # kernels, made once per shape, pays back within the first epoch.
        torch.backends.cudnn.benchmark = True
    n_train = len(data.indices("train"))
    steps = batch_plan(n_train, hp.batch_size, group.world)
    if steps == 0 or len(data.indices("val")) == 0:
        raise ValueError(f"need >= 2 training and >= 1 validation cases (train={n_train})")
    model, ddp = group.wrap(model, find_unused=bool(hp.freeze_backbone_epochs)
                            or spec.label_mode == "boxes")
    optimizer = optimizer_for(model, hp)
    total, warmup = steps * hp.epochs, steps * hp.warmup_epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, hp.schedule))
    amp_dtype, scaler = precision(device, hp)
    net: Callable[..., Any] = torch.compile(ddp) if options.compile else ddp
    eval_net = None if ddp is model else (torch.compile(model) if options.compile else model)
    late = options.read_loss_late
    if late is None:
        late = device.type == "cuda"
    return _Loop(spec, data, device, on_progress, should_stop, model, net, strategy,
                 BatchSource(data, device, options.workers), gen, optimizer, scheduler, scaler,
                 amp_dtype, steps, options.checkpointer, group, eval_net, late)


def train(
    spec: TrainingSpec,
    data: PreparedData,
    device: torch.device,
    on_progress: Callable[[ProgressUpdate], None],
    should_stop: Callable[[], object],
    *,
    store: ObjectStore | None = None,
    options: TrainOptions | None = None,
) -> TrainResult:
    """Train, evaluate every epoch, stop early on a stalled main metric, keep the best epoch."""
    options = options or TrainOptions()
    hp = spec.hyperparameters
    loop = _build_loop(spec, data, device, on_progress, should_stop, store, options)
    resumed = None
    if options.resume is not None:
        loop.restore(options.resume)
        resumed = loop.epoch
    while loop.epoch < hp.epochs:
        if loop.best is not None and hp.early_stopping_patience and \
                loop.epoch - int(loop.best["epoch"]) >= hp.early_stopping_patience:
            break  # resumed from the checkpoint of the epoch that stopped early
        epoch, t0 = loop.epoch + 1, time.monotonic()
        train_loss = loop.train_epoch(epoch)
        if loop.end_epoch(epoch, train_loss, loop.evaluate(), time.monotonic() - t0):
            break
    assert loop.best is not None  # epochs >= 1 by the schema
    loop.model.load_state_dict(loop.best["state"])
    if not loop.group.is_main:  # rank 0 alone evaluates the best model and reports it
        return TrainResult(loop.model, dict(loop.best["metrics"]), loop.history,
                           int(loop.best["epoch"]), resumed_from_epoch=resumed)
    val = loop.data.indices("val")
    evaluation = loop.collect(val)
    evaluation.patients = [data.patient_ids[i] for i in val]
    metrics = {**loop.best["metrics"],  # issue 15: exam-level PE scoring (runner/pe_metrics.py)
               **exam_scores(spec, data, val, evaluation.preds, evaluation.targets)}
    samples = np.asarray(data.x[val[:SAMPLES]])
    with torch.no_grad():
        example = loop.normalise(torch.from_numpy(samples[:2]).to(device).float() / 255.0)
    model = loop.model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    return TrainResult(model, metrics, loop.history, int(loop.best["epoch"]),
                       time.monotonic() - loop.started, loop.strategy, evaluation, samples,
                       example.detach().cpu().contiguous(), resumed)
