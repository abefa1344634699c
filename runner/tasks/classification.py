"""Single- and multi-label classification: logits per image, AUC-first metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from runner.data import PreparedData
from runner.metrics import classification_metrics, probabilities
from runner.tasks.base import EvalOutput, Model, Targets, TaskStrategy, to_rgb
from schemas.spec import TrainingSpec


class ClassificationStrategy(TaskStrategy):
    main_metric = "auc"

    def __init__(self, spec: TrainingSpec, data: PreparedData, device: torch.device) -> None:
        super().__init__(spec, data, device)
        self.label_mode = spec.label_mode
        self.loss_fn = loss_fn(spec, data, device)

    def loss(self, model: Model, xb: torch.Tensor, targets: Targets) -> torch.Tensor:
        logits = model(xb)
        return self.loss_fn(logits.float(), targets)

    def predict(self, model: Model, xb: torch.Tensor, targets: Targets) -> torch.Tensor:
        return model(xb).float().cpu()

    def evaluate(self, preds: list[Any], targets: list[Targets]) -> EvalOutput:
        logits, target = torch.cat(preds), torch.cat([t.cpu() for t in targets])
        metrics = classification_metrics(logits, target, self.label_mode, self.classes,
                                         self.spec.metrics)
        return EvalOutput(metrics, probabilities(logits, self.label_mode), target)

    def draw(self, image: np.ndarray, pred: Any, target: Any) -> Image.Image:
        """Predicted class(es) with probability over the truth, in the corner."""
        pic = to_rgb(image).resize((image.shape[2] * 2, image.shape[1] * 2))
        probs = pred.tolist()
        if self.label_mode == "single_label":
            k = int(np.argmax(probs))
            said, truth = f"{self.classes[k]} {probs[k]:.2f}", self.classes[int(target)]
            ok = k == int(target)
        else:
            said = ",".join(c for c, p in zip(self.classes, probs, strict=True) if p >= 0.5)
            truth = ",".join(c for c, t in zip(self.classes, target.tolist(), strict=True) if t)
            ok = said == truth
        draw = ImageDraw.Draw(pic)
        draw.rectangle((0, 0, pic.width, 22), fill=(0, 0, 0))
        draw.text((2, 0), f"pred {said or '-'}", fill=(0, 255, 0) if ok else (255, 80, 80))
        draw.text((2, 11), f"true {truth or '-'}", fill=(255, 255, 255))
        return pic


def loss_fn(spec: TrainingSpec, data: PreparedData, device: torch.device) -> nn.Module:
    """Cross-entropy for single-label; BCE per label for multi-label or when asked."""
    hp = spec.hyperparameters
    train_y = torch.from_numpy(np.asarray(data.y[data.indices("train")]))
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
    return OneHotBCE(pos_weight, k)


class OneHotBCE(nn.Module):
    """BCE-with-logits that accepts class indices too (single-label trained with BCE)."""

    def __init__(self, pos_weight: torch.Tensor | None, k: int) -> None:
        super().__init__()
        self.inner = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        self.k = k

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 1:
            target = F.one_hot(target.long(), self.k)
        return self.inner(logits, target.to(logits.dtype))
