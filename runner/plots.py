"""Plots of a finished run: curves, ROC, calibration, confusion matrix and samples.

matplotlib with the Agg backend (no display on a runner); each function
writes one PNG and returns its path, or None when the plot has no data
(an ROC curve needs both outcomes of a class in the validation split).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.classification import binary_roc

from runner.confidence import calibration_bins
from runner.tasks.base import EvalOutput, TaskStrategy

CURVE_METRICS = ("auc", "accuracy", "map_50", "map_50_95", "dice", "iou")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def loss_curve(history: list[dict[str, float]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = [h["epoch"] for h in history]
    for key in ("train_loss", "val_loss"):
        if all(key in h for h in history):
            ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="loss", title="loss")
    ax.legend()
    return _save(fig, path)


def metric_curve(history: list[dict[str, float]], path: Path) -> Path | None:
    keys = [k for k in CURVE_METRICS if history and all(k in h for h in history)]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = [h["epoch"] for h in history]
    for key in keys:
        ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="validation metric", ylim=(0, 1.02), title="validation")
    ax.legend()
    return _save(fig, path)


def _onehot(target: torch.Tensor, k: int) -> torch.Tensor:
    if target.ndim == 1:
        return torch.nn.functional.one_hot(target.long(), k)
    return target.long()


def roc(evaluation: EvalOutput, classes: list[str], label_mode: str,
        path: Path) -> Path | None:
    probs: torch.Tensor = evaluation.preds
    onehot = _onehot(evaluation.targets, probs.shape[1])
    shown = [k for k in range(len(classes)) if 0 < int(onehot[:, k].sum()) < len(onehot)]
    if label_mode == "single_label" and len(classes) == 2:
        shown = [k for k in shown if k == 1]  # binary: the positive class's curve
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for k in shown:
        fpr, tpr, _ = binary_roc(probs[:, k], onehot[:, k])
        ax.plot(fpr.numpy(), tpr.numpy(), label=classes[k])
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (validation)")
    ax.legend()
    return _save(fig, path)


def calibration(evaluation: EvalOutput, classes: list[str], label_mode: str,
                path: Path, bins: int = 10) -> Path | None:
    """Reliability diagram: observed rate against mean predicted probability per bin
    (equal width), one line per class with a positive (two classes: the positive one),
    the bin counts as a histogram below, and each class's expected calibration error."""
    probs = np.asarray(evaluation.preds, dtype=np.float64)
    onehot = _onehot(evaluation.targets, probs.shape[1]).numpy()
    shown = [k for k in range(len(classes)) if onehot[:, k].any()]
    if label_mode == "single_label" and len(classes) == 2:
        shown = [k for k in shown if k == 1]
    if not shown:
        return None
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    for k in shown:
        mean_p, rate, count, ece = calibration_bins(probs[:, k], onehot[:, k], bins)
        used = count > 0
        ax.plot(mean_p[used], rate[used], marker="o", label=f"{classes[k]} (ECE {ece:.3f})")
        hist.hist(probs[:, k], bins=bins, range=(0, 1), histtype="step")
    ax.set(ylabel="observed rate", ylim=(-0.02, 1.02), title="calibration (validation)")
    ax.legend(fontsize=7)
    hist.set(xlabel="predicted probability", ylabel="cases", xlim=(0, 1))
    return _save(fig, path)


def confusion(evaluation: EvalOutput, classes: list[str], label_mode: str,
              path: Path) -> Path:
    """K x K counts for single-label; for multi-label one present/absent row per class."""
    probs: torch.Tensor = evaluation.preds
    if label_mode == "single_label":
        truth, pred = evaluation.targets.long(), probs.argmax(1)
        matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
        for t, p in zip(truth.tolist(), pred.tolist(), strict=True):
            matrix[t, p] += 1
        rows, cols, xlabel = classes, classes, "predicted"
    else:
        truth, pred = evaluation.targets.long(), (probs >= 0.5).long()
        matrix = np.stack([[int(((truth[:, k] == t) & (pred[:, k] == p)).sum())
                            for t in (1, 0) for p in (1, 0)] for k in range(len(classes))])
        rows, cols, xlabel = classes, ["TP", "FN", "FP", "TN"], "outcome at 0.5"
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cols), 1.2 + 0.6 * len(rows)))
    ax.imshow(matrix, cmap="Blues")
    dark = matrix.max() / 2 if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > dark else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=30)
    ax.set_yticks(range(len(rows)), rows)
    ax.set(xlabel=xlabel, ylabel="true", title="confusion (validation)")
    return _save(fig, path)


def samples(strategy: TaskStrategy, images: np.ndarray, evaluation: EvalOutput,
            path: Path, per_row: int = 4) -> Path | None:
    """A grid of the first validation cases with prediction and truth drawn on them."""
    n = min(len(images), len(evaluation.preds))
    if n == 0:
        return None
    tiles = [strategy.draw(images[i], evaluation.preds[i], evaluation.targets[i])
             for i in range(n)]
    w, h = max(t.width for t in tiles), max(t.height for t in tiles)
    cols = min(per_row, n)
    grid = Image.new("RGB", (cols * (w + 4), -(-n // cols) * (h + 4)), (32, 32, 32))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * (w + 4), (i // cols) * (h + 4)))
    grid.save(path)
    return path
