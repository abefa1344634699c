"""Classification metrics from logits (DESIGN.md §8 "Evaluation").

AUC is computed per class one-vs-rest with torchmetrics' binary AUROC, so
single-label, multi-class and multi-label share one definition. A class
without both positives and negatives in the validation set has no AUC: the
key is left out rather than reported as a misleading 0 or 0.5 (the macro AUC
averages the classes that have one), so a rare finding absent from a small
batch never fails a run; the final report (runner/report.py) writes it as
``null`` with its reason (``undefined`` in metrics.json).

These are the per-epoch numbers (early stopping, progress, history), with
sensitivity and specificity at a probability of 0.5. The best model's report
adds 95 % bootstrap intervals, the operating point chosen on validation and
calibration (runner/confidence.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_recall,
    binary_specificity,
    multilabel_accuracy,
)


def probabilities(logits: torch.Tensor, label_mode: str) -> torch.Tensor:
    """Softmax for single-label (classes compete), sigmoid for multi-label."""
    logits = logits.float()
    return logits.softmax(dim=1) if label_mode == "single_label" else logits.sigmoid()


def log_loss(logits: torch.Tensor, target: torch.Tensor, label_mode: str) -> float:
    """Unweighted cross-entropy (single-label) or mean binary cross-entropy (multi-label)."""
    logits = logits.float()
    if label_mode == "single_label":
        return float(F.cross_entropy(logits, target.long()))
    return float(F.binary_cross_entropy_with_logits(logits, target.float()))


def classification_metrics(
    logits: torch.Tensor, target: torch.Tensor, label_mode: str, classes: Sequence[str],
    report: Sequence[str] = (),
) -> dict[str, float]:
    """accuracy, auc (binary or macro), val_loss, auc_<class>, and for 2 classes
    sensitivity/specificity of the second class at the argmax decision; plus what a
    preset asks for in ``report`` (the spec's ``metrics``): ``auc_any`` and
    ``weighted_log_loss`` (multi-label, see :func:`any_label_metrics`)."""
    logits, target = logits.detach().cpu(), target.detach().cpu()
    probs = probabilities(logits, label_mode)
    out = {"val_loss": log_loss(logits, target, label_mode)}
    if label_mode == "single_label":
        labels = target.long()
        out["accuracy"] = float((probs.argmax(dim=1) == labels).float().mean())
        onehot = F.one_hot(labels, num_classes=probs.shape[1])
    else:
        onehot = target.long()
        out["accuracy"] = float(
            multilabel_accuracy(probs, onehot, num_labels=probs.shape[1], average="micro")
        )
    per_class = _per_class_auc(probs, onehot, classes)
    binary = label_mode == "single_label" and probs.shape[1] == 2
    if binary:
        out.update(_binary_extras(probs[:, 1], onehot[:, 1], per_class, classes[1]))
    else:
        out.update({f"auc_{name}": v for name, v in per_class.items()})
        if per_class:
            out["auc"] = sum(per_class.values()) / len(per_class)
    if label_mode == "multi_label" and {"auc_any", "weighted_log_loss"} & set(report):
        out.update(any_label_metrics(probs, target.float()))
    return out


def any_label_metrics(probs: torch.Tensor, target: torch.Tensor,
                      any_weight: float = 2.0) -> dict[str, float]:
    """RSNA 2019 hemorrhage scoring: an ``any`` label derived as the maximum of the
    subtypes (probability and truth), then the per-image binary log loss averaged
    with weight 2 for ``any`` and 1 for each subtype; plus the AUC of ``any``."""
    eps = 1e-7
    p = torch.cat([probs, probs.max(dim=1, keepdim=True).values], dim=1).clamp(eps, 1 - eps)
    t = torch.cat([target, target.max(dim=1, keepdim=True).values], dim=1)
    w = torch.ones(p.shape[1])
    w[-1] = any_weight
    bce = -(t * p.log() + (1 - t) * (1 - p).log())
    out = {"weighted_log_loss": float(((bce * w).sum(dim=1) / w.sum()).mean())}
    positives = int(t[:, -1].sum())
    if 0 < positives < t.shape[0]:
        out["auc_any"] = min(1.0, max(0.0, float(binary_auroc(p[:, -1], t[:, -1].long()))))
    return out


def _per_class_auc(
    probs: torch.Tensor, onehot: torch.Tensor, classes: Sequence[str]
) -> dict[str, float]:
    """One-vs-rest AUROC for every class that has both outcomes in the target."""
    out: dict[str, float] = {}
    for k, name in enumerate(classes):
        positives = int(onehot[:, k].sum())
        if 0 < positives < onehot.shape[0]:
            auc = float(binary_auroc(probs[:, k], onehot[:, k]))
            out[name] = min(1.0, max(0.0, auc))  # float32 rounding can give 1.0000001
    return out


def _binary_extras(
    score: torch.Tensor, positive: torch.Tensor, per_class: dict[str, float], name: str
) -> dict[str, float]:
    """One AUC for a two-class task (the positive class's), plus the operating point."""
    out: dict[str, float] = {}
    if name in per_class:
        out["auc"] = per_class[name]
    out["sensitivity"] = float(binary_recall(score, positive, threshold=0.5))
    out["specificity"] = float(binary_specificity(score, positive, threshold=0.5))
    return out
