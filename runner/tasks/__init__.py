"""Task-type strategies: what the shared training loop delegates per label mode."""

from __future__ import annotations

import torch

from runner.data import PreparedData
from runner.tasks.base import EvalOutput, TaskStrategy
from schemas.spec import TrainingSpec

__all__ = ["EvalOutput", "TaskStrategy", "strategy_for"]


def strategy_for(spec: TrainingSpec, data: PreparedData, device: torch.device) -> TaskStrategy:
    """The strategy of the spec's label mode (imported lazily: detection pulls torchvision)."""
    if spec.label_mode == "boxes":
        from runner.tasks.detection import DetectionStrategy

        return DetectionStrategy(spec, data, device)
    if spec.label_mode == "masks":
        from runner.tasks.segmentation import SegmentationStrategy

        return SegmentationStrategy(spec, data, device)
    from runner.tasks.classification import ClassificationStrategy

    return ClassificationStrategy(spec, data, device)
