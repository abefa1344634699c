"""The recipe pieces of the training loop (DESIGN.md §8): seeds, schedule, optimizer,
precision, frozen backbone, batches per epoch. Pure helpers of ``runner.train``."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from runner.model import head_prefixes
from schemas.tasks import Hyperparameters


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG the loop touches; the returned generator drives shuffling and augmentation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine to zero (or constant), per optimizer step."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def optimizer_for(model: nn.Module, hp: Hyperparameters) -> torch.optim.Optimizer:
    """No weight decay on norms and biases (timm's grouping). On CUDA the fused kernels:
    one launch per step for every parameter instead of a handful per tensor group, the
    same update (their state dicts load into each other, so a checkpoint resumes on
    either device)."""
    groups = param_groups_weight_decay(model, hp.weight_decay)
    fused = all(p.is_cuda for p in model.parameters()) or None
    if hp.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=hp.learning_rate, momentum=0.9, nesterov=True,
                               fused=fused)
    return torch.optim.AdamW(groups, lr=hp.learning_rate, fused=fused)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """A checkpoint's optimizer state, run with the kernels this optimizer was built with.
    ``load_state_dict`` takes every hyperparameter of the writer's groups, ``fused`` too:
    a checkpoint written on a CPU would resume unfused on a GPU, and one written on a
    GPU fused on a CPU (whose fused kernels round differently). The flag is set before
    loading, so the state (Adam's ``step``) is placed as the kernels need it."""
    groups = [dict(saved, fused=own["fused"]) if "fused" in own else saved
              for saved, own in zip(state["param_groups"], optimizer.param_groups,
                                    strict=False)]
    optimizer.load_state_dict({**state, "param_groups": groups})


def precision(device: torch.device, hp: Hyperparameters
              ) -> tuple[torch.dtype | None, torch.amp.GradScaler]:
    """bf16 autocast on CUDA; fp16 with a grad scaler where bf16 is missing; fp32 on CPU."""
    if device.type != "cuda" or not hp.mixed_precision:
        return None, torch.amp.GradScaler(device.type, enabled=False)
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, torch.amp.GradScaler("cuda", enabled=False)
    return torch.float16, torch.amp.GradScaler("cuda", enabled=True)


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze everything but the classifier head (``freeze_backbone_epochs``)."""
    heads = head_prefixes(model)
    for name, p in model.named_parameters():
        p.requires_grad_(not frozen or not heads or name.startswith(heads))


def batch_plan(n: int, batch_size: int, world: int = 1) -> int:
    """Batches per epoch; a last batch too small to give every process two samples is
    dropped (BatchNorm needs two; one process: a last batch of one)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 * world else 0)


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
