"""Object detection with torchvision-style detectors: mAP@0.5 and mAP@0.5:0.95.

The convention shared with the model builders (runner/builders.py):
training is ``model(images, targets) -> dict of losses``, evaluation is
``model(images) -> [{"boxes", "labels", "scores"}]``, class 0 is background
(so ``labels`` are 1-based indices into the task's classes), and images go
in as [0, 1] tensors because the detectors normalise and resize inside.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from runner.loader import to_device
from runner.tasks.base import EvalOutput, Model, Targets, TaskStrategy, colour, contrast, to_rgb

log = logging.getLogger("radtrain.runner.detection")
DRAW_MIN_SCORE = 0.3
DRAW_MAX_BOXES = 10


def as_target(rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """(k, 5) ``x1, y1, x2, y2, label`` -> torchvision's target dict."""
    return {"boxes": rows[:, :4].float(), "labels": rows[:, 4].long()}


class DetectionStrategy(TaskStrategy):
    main_metric = "map_50"
    normalise_input = False
    channels_last = False

    def targets_to_device(self, targets: Targets) -> Targets:
        return [t.to(self.device, non_blocking=True) for t in targets]

    def augment(self, xb: torch.Tensor, targets: Targets, level: str,
                gen: torch.Generator) -> tuple[torch.Tensor, Targets]:
        """Horizontal flips (boxes mirrored with them) and, for ``strong``, contrast.

        Rotations and scaling would turn a box into a looser one, so they are
        left out for detection rather than teaching the model sloppy boxes.
        """
        if level == "none":
            return xb, targets
        b, w = xb.shape[0], xb.shape[-1]
        flip = torch.rand(b, generator=gen) < 0.5
        xb = torch.where(to_device(flip.view(b, 1, 1, 1), xb.device), xb.flip(-1), xb)
        moved = []
        for i, t in enumerate(targets):
            if flip[i] and len(t):
                t = t.clone()
                t[:, 0], t[:, 2] = w - t[:, 2], w - t[:, 0]
            moved.append(t)
        return contrast(xb, level, gen), moved

    def loss(self, model: Model, xb: torch.Tensor, targets: Targets) -> torch.Tensor:
        losses = model(list(xb), [as_target(t) for t in targets])
        return torch.stack([v.float() for v in losses.values()]).sum()

    def predict(self, model: Model, xb: torch.Tensor, targets: Targets) -> Any:
        out = model(list(xb))
        return [{k: v.detach().float().cpu() if k != "labels" else v.detach().cpu()
                 for k, v in d.items()} for d in out]

    def evaluate(self, preds: list[Any], targets: list[Targets]) -> EvalOutput:
        flat_preds = [p for batch in preds for p in batch]
        flat_targets = [as_target(t.cpu()) for batch in targets for t in batch]
        return EvalOutput(mean_average_precision(flat_preds, flat_targets), flat_preds,
                          flat_targets)

    def score(self, metrics: dict[str, float]) -> tuple[float, float]:
        return (metrics.get("map_50", 0.0), metrics.get("map_50_95", 0.0))

    def draw(self, image: np.ndarray, pred: Any, target: Any) -> Image.Image:
        """Truth in white, predictions (score >= 0.3, at most 10) in their class colour."""
        scale = 2
        pic = to_rgb(image).resize((image.shape[2] * scale, image.shape[1] * scale))
        draw = ImageDraw.Draw(pic)
        for box in target["boxes"].tolist():
            draw.rectangle([v * scale for v in box], outline=(255, 255, 255), width=1)
        keep = pred["scores"] >= DRAW_MIN_SCORE
        boxes, labels, scores = (pred[k][keep][:DRAW_MAX_BOXES] for k in
                                 ("boxes", "labels", "scores"))
        for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist(),
                                     strict=True):
            xy = [v * scale for v in box]
            draw.rectangle(xy, outline=colour(int(label)), width=2)
            name = self.classes[int(label) - 1] if 0 < label <= len(self.classes) else "?"
            draw.text((xy[0] + 2, xy[1] + 1), f"{name} {score:.2f}", fill=colour(int(label)))
        return pic


def mean_average_precision(preds: list[dict[str, torch.Tensor]],
                           targets: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """COCO mAP@0.5 and mAP@0.5:0.95 (torchmetrics over faster-coco-eval).

    A value COCO leaves undefined (no ground-truth box at all: -1) is left
    out of the result rather than reported as a misleading score.
    """
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox",
                                  backend="faster_coco_eval")
    metric.update(preds, targets)
    raw = metric.compute()
    out = {"map_50": float(raw["map_50"]), "map_50_95": float(raw["map"]),
           "map_75": float(raw["map_75"])}
    return {k: v for k, v in out.items() if v >= 0.0}
