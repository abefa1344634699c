"""The held-out report of a finished run: intervals, operating points, undefined metrics.

Dispatches on the label mode to runner/confidence.py (classification,
segmentation) and runner/confidence_detection.py (mAP), and merges the
result with the best epoch's metrics for ``metrics.json`` and the model card:
a metric that is undefined (a class without a positive validation case) is
``null`` there, with its reason under ``undefined``; never 0.5, never an error.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from runner.confidence import Resampler, calibration_report, classification_report, dice_report
from runner.tasks.base import EvalOutput
from schemas.spec import TrainingSpec

DEFAULT_RESAMPLES = 2000
log = logging.getLogger("radtrain.runner.report")


def resamples_for(spec: TrainingSpec, setting: int | None) -> int:
    """The task's own number, else the runner's setting, else 2,000."""
    chosen = spec.evaluation.bootstrap_resamples
    if chosen is not None:
        return chosen
    return DEFAULT_RESAMPLES if setting is None else setting


def evaluation_report(spec: TrainingSpec, evaluation: EvalOutput | None,
                      resamples: int) -> dict[str, Any]:
    """Empty without an evaluation (a rank other than 0, or a run that never evaluated).

    A trained model is never lost to its report: an unexpected error here is
    logged and written as ``report_error`` instead of failing the task.
    """
    if evaluation is None:
        return {}
    try:
        return _report(spec, evaluation, resamples)
    except Exception as exc:
        log.exception("task %s: the evaluation report failed", spec.task_id)
        return {"report_error": f"{type(exc).__name__}: {exc}"[:500]}


def _report(spec: TrainingSpec, evaluation: EvalOutput, resamples: int) -> dict[str, Any]:
    seed = spec.hyperparameters.seed
    if spec.label_mode in ("single_label", "multi_label"):
        probs = np.asarray(evaluation.preds, dtype=np.float64)
        targets = np.asarray(evaluation.targets)
        rs = Resampler.for_cases(evaluation.patients, len(probs), resamples, seed)
        out = classification_report(probs, targets, spec.label_mode, spec.classes, rs,
                                    spec.evaluation.target_sensitivity)
        out["calibration"] = calibration_report(probs, targets, spec.label_mode, spec.classes)
        return out
    if spec.label_mode == "masks":
        from runner.tasks.segmentation import dice_iou

        dice, _ = dice_iou(evaluation.preds, evaluation.targets, len(spec.classes))
        rs = Resampler.for_cases(evaluation.patients, len(dice), resamples, seed)
        return dice_report(dice.numpy(), spec.classes, rs)
    from runner.confidence_detection import map_report

    rs = Resampler.for_cases(evaluation.patients, len(evaluation.targets), resamples, seed)
    return map_report(evaluation.preds, evaluation.targets, spec.classes, rs)


def reported_metrics(metrics: dict[str, float], report: dict[str, Any]
                     ) -> dict[str, float | None]:
    """The best epoch's metrics with every undefined one present as ``None``."""
    out: dict[str, float | None] = dict(metrics)
    for name in report.get("undefined", {}):
        out.setdefault(name, None)
    return out


SOFTWARE = ("radtrain", "torch", "torchvision", "timm", "pydicom", "numpy", "torchmetrics",
            "onnxruntime")


def software_versions() -> dict[str, str]:
    """What trained the model, recorded in the run's ``spec.json`` (issue 15 item 8)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in SOFTWARE:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
