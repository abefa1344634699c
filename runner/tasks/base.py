"""What differs between task types, behind one small interface the loop calls.

The training loop (``runner.train``) owns everything shared: seeds, the
optimizer and schedule, mixed precision, checkpoints, early stopping,
progress. A strategy owns what only its task type knows: how a batch's
targets look, how augmentation moves them, the loss, the evaluation
metrics, and how a prediction is drawn for the sample-predictions plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from imaging.palette import class_colour
from runner.data import PreparedData
from runner.loader import to_device
from schemas.spec import TrainingSpec

Targets = Any
"""A batch's targets: a tensor (labels, masks) or a list of per-image tensors (boxes)."""
Model = Callable[..., Any]
"""The network, or its ``torch.compile`` wrapper: strategies only call it."""


@dataclass
class EvalOutput:
    """Everything one evaluation pass produced, kept on the CPU."""

    metrics: dict[str, float]
    preds: Any
    targets: Any
    patients: list[str | None] | None = None
    """The patient of each case, in order (set for the final validation pass), so that
    confidence intervals resample patients (runner/confidence.py)."""


class TaskStrategy:
    """Defaults are the classification ones; subclasses override what differs."""

    label_mode: str = "single_label"
    main_metric: str = "auc"
    normalise_input: bool = True
    """Detection models normalise inside (torchvision's transform): they get [0, 1]."""
    channels_last: bool = True

    def __init__(self, spec: TrainingSpec, data: PreparedData, device: torch.device) -> None:
        self.spec, self.data, self.device = spec, data, device
        self.classes = list(spec.classes)

    # --- training -----------------------------------------------------------
    def targets_to_device(self, targets: Targets) -> Targets:
        return targets.to(self.device, non_blocking=True)

    def augment(self, xb: torch.Tensor, targets: Targets, level: str,
                gen: torch.Generator) -> tuple[torch.Tensor, Targets]:
        return augment(xb, level, gen), targets

    def loss(self, model: Model, xb: torch.Tensor, targets: Targets) -> torch.Tensor:
        raise NotImplementedError

    # --- evaluation ---------------------------------------------------------
    def predict(self, model: Model, xb: torch.Tensor, targets: Targets) -> Any:
        """One eval batch's predictions, moved to the CPU (``targets`` for a batch loss)."""
        raise NotImplementedError

    def evaluate(self, preds: list[Any], targets: list[Targets]) -> EvalOutput:
        raise NotImplementedError

    def score(self, metrics: dict[str, float]) -> tuple[float, float]:
        """Early-stopping monitor, larger is better: the main metric, ties by lower val loss."""
        return (metrics.get(self.main_metric, 0.0), -metrics.get("val_loss", 0.0))

    # --- drawing ------------------------------------------------------------
    def draw(self, image: np.ndarray, pred: Any, target: Any) -> Image.Image:
        """(C, H, W) uint8 image with its prediction (and the truth) drawn on it."""
        raise NotImplementedError


def to_rgb(image: np.ndarray) -> Image.Image:
    """(C, H, W) uint8 -> RGB picture: the first three channels, or one repeated."""
    c = image.shape[0]
    planes = image[:3] if c >= 3 else np.repeat(image[:1], 3, axis=0)
    return Image.fromarray(np.ascontiguousarray(planes.transpose(1, 2, 0)))


def random_affine(b: int, level: str, gen: torch.Generator) -> torch.Tensor:
    """Per-sample flip + shift (light), plus rotation and scale (strong), as (B, 2, 3)."""
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    shift = (torch.rand(b, 2, generator=gen) - 0.5) * 0.16
    angle = torch.zeros(b)
    scale = torch.ones(b)
    if level == "strong":
        angle = (torch.rand(b, generator=gen) - 0.5) * math.radians(30)
        scale = 0.85 + torch.rand(b, generator=gen) * 0.3
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], 1),
            torch.stack([sin * flip, cos, shift[:, 1]], 1),
        ],
        1,
    )


def warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    grid = F.affine_grid(to_device(theta.to(x.dtype), x.device), list(x.shape),
                         align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def contrast(xb: torch.Tensor, level: str, gen: torch.Generator) -> torch.Tensor:
    """Per-sample gain for ``strong`` augmentation (drawn on the CPU generator)."""
    if level != "strong":
        return xb
    gain = to_device(0.9 + torch.rand(xb.shape[0], 1, 1, 1, generator=gen) * 0.2, xb.device)
    return (xb * gain).clamp_(0.0, 1.0)


def augment(xb: torch.Tensor, level: str, gen: torch.Generator) -> torch.Tensor:
    """Random flip + shift (light), plus rotation, scale and contrast (strong), per sample.

    One affine ``grid_sample`` does it all, on whatever device the batch is on;
    random draws come from the CPU generator so runs repeat exactly.
    """
    if level == "none":
        return xb
    out = warp(xb, random_affine(xb.shape[0], level, gen))
    return contrast(out, level, gen)


def colour(class_index: int) -> tuple[int, int, int]:
    """Colour of a 1-based model label (0 is background): the previews' palette."""
    return class_colour(class_index - 1)
