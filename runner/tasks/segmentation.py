"""Semantic segmentation: per-pixel logits, Dice and IoU (empty-vs-empty counts as 1).

Convention shared with the builders: the model returns logits (N, K, H, W)
with K = classes + 1 and background at index 0 (torchvision's segmentation
models return a dict, whose ``"out"`` is used); masks hold class indices.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from runner.tasks.base import (
    EvalOutput,
    Model,
    Targets,
    TaskStrategy,
    colour,
    contrast,
    random_affine,
    to_rgb,
    warp,
)

ALPHA = 0.45


def logits_of(output: Any, size: tuple[int, int]) -> torch.Tensor:
    """The logits tensor, at the mask's size (some decoders stop at a stride)."""
    if isinstance(output, dict):
        output = output["out"]
    if tuple(output.shape[-2:]) != tuple(size):
        output = F.interpolate(output, size=size, mode="bilinear", align_corners=False)
    return output


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes: it keeps small structures from
    drowning in background pixels, where cross-entropy alone would."""
    k = logits.shape[1]
    probs = logits.float().softmax(1)[:, 1:]
    onehot = F.one_hot(masks, k).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean()


def dice_iou(pred: torch.Tensor, truth: torch.Tensor, n_classes: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) Dice and IoU per image and foreground class; an empty pair scores 1."""
    dice = torch.ones(pred.shape[0], n_classes)
    iou = torch.ones(pred.shape[0], n_classes)
    for c in range(1, n_classes + 1):
        p = (pred == c).flatten(1)
        g = (truth == c).flatten(1)
        inter = (p & g).sum(1).float()
        total = p.sum(1).float() + g.sum(1).float()
        union = (p | g).sum(1).float()
        some = total > 0
        dice[some, c - 1] = 2 * inter[some] / total[some]
        iou[some, c - 1] = inter[some] / union[some]
    return dice, iou


class SegmentationStrategy(TaskStrategy):
    main_metric = "dice"

    def targets_to_device(self, targets: Targets) -> Targets:
        return targets.to(self.device, non_blocking=True).long()

    def augment(self, xb: torch.Tensor, targets: Targets, level: str,
                gen: torch.Generator) -> tuple[torch.Tensor, Targets]:
        """The classification affine, applied to the mask too (nearest, so indices stay)."""
        if level == "none":
            return xb, targets
        theta = random_affine(xb.shape[0], level, gen)
        xb = warp(xb, theta)
        masks = warp(targets[:, None].float(), theta, mode="nearest")[:, 0].long()
        return contrast(xb, level, gen), masks

    def loss(self, model: Model, xb: torch.Tensor, targets: Targets) -> torch.Tensor:
        logits = logits_of(model(xb), targets.shape[-2:]).float()
        return F.cross_entropy(logits, targets) + soft_dice_loss(logits, targets)

    def predict(self, model: Model, xb: torch.Tensor, targets: Targets) -> Any:
        masks = targets.to(self.device).long()
        logits = logits_of(model(xb), masks.shape[-2:]).float()
        loss_sum = float(F.cross_entropy(logits, masks, reduction="mean")) * xb.shape[0]
        return {"pred": logits.argmax(1).to(torch.uint8).cpu(), "loss_sum": loss_sum}

    def evaluate(self, preds: list[Any], targets: list[Targets]) -> EvalOutput:
        pred = torch.cat([p["pred"] for p in preds])
        truth = torch.cat([t.cpu() for t in targets]).to(torch.uint8)
        dice, iou = dice_iou(pred, truth, len(self.classes))
        metrics = {"dice": float(dice.mean()), "iou": float(iou.mean()),
                   "val_loss": sum(p["loss_sum"] for p in preds) / max(len(pred), 1)}
        for k, name in enumerate(self.classes):
            metrics[f"dice_{name}"] = float(dice[:, k].mean())
            metrics[f"iou_{name}"] = float(iou[:, k].mean())
        return EvalOutput(metrics, pred, truth)

    def draw(self, image: np.ndarray, pred: Any, target: Any) -> Image.Image:
        """Truth (left) and prediction (right), each as a colour overlay."""
        base = to_rgb(image)
        halves = [_overlay(base, np.asarray(m)) for m in (target, pred)]
        pic = Image.new("RGB", (base.width * 2 + 2, base.height), (0, 0, 0))
        pic.paste(halves[0], (0, 0))
        pic.paste(halves[1], (base.width + 2, 0))
        return pic.resize((pic.width * 2, pic.height * 2), Image.Resampling.NEAREST)


def _overlay(base: Image.Image, mask: np.ndarray) -> Image.Image:
    rgb = np.asarray(base, dtype=np.float32).copy()
    for c in np.unique(mask):
        if c == 0:
            continue
        sel = mask == c
        rgb[sel] = (1 - ALPHA) * rgb[sel] + ALPHA * np.asarray(colour(int(c)), np.float32)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
