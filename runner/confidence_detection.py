"""Bootstrap interval of detection mAP@0.5 (issue 15 item 7; see runner/confidence.py).

Detections are matched to the ground truth once, COCO style (per image and
class, highest score first, each to the unmatched box of highest IoU >= 0.5;
at most 100 detections per image), so a resample only re-weights images:
the weighted cumulative true and false positives give each class's
precision-recall curve, made monotone and read at COCO's 101 recall points,
for every resample of a block at once. Matching once is what makes 2,000
resamples cheap; the point estimate is this same computation. It follows the
pycocotools algorithm (radtrain has no crowd boxes or area ranges); torchmetrics'
faster-coco-eval backend, which gives ``map_50`` in metrics.json, agrees with it
exactly on most sets and within ~0.01 on some (tests/unit/runner/test_confidence.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from runner.confidence import Interval, Resampler, Stat, macro_mean

IOU = 0.5
MAX_DETS = 100
RECALLS = np.linspace(0.0, 1.0, 101)


def match(preds: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]],
          n_classes: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per class (1-based labels): detection scores, true-positive flags, image index of each
    detection, and ground-truth boxes per image."""
    out = []
    for c in range(1, n_classes + 1):
        scores, tps, imgs = [], [], []
        gt_count = np.zeros(len(targets), dtype=np.float64)
        for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
            top = torch.argsort(p["scores"], descending=True, stable=True)[:MAX_DETS]
            keep = top[p["labels"][top] == c]
            boxes, sc = p["boxes"][keep], p["scores"][keep]
            gt = t["boxes"][t["labels"] == c]
            gt_count[i] = len(gt)
            tps.append(_greedy(boxes, gt))
            scores.append(sc.numpy())
            imgs.append(np.full(len(sc), i, dtype=np.int64))
        s = np.concatenate(scores) if scores else np.zeros(0)
        order = np.argsort(-s, kind="mergesort")
        out.append((s[order], np.concatenate(tps)[order] if tps else np.zeros(0, bool),
                    np.concatenate(imgs)[order] if imgs else np.zeros(0, np.int64), gt_count))
    return out


def _greedy(boxes: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """``boxes`` in descending score order; each takes the best still-free box at IoU >= 0.5."""
    tp = np.zeros(len(boxes), dtype=bool)
    if len(boxes) == 0 or len(gt) == 0:
        return tp
    iou = box_iou(boxes.float(), gt.float()).numpy()
    free = np.ones(len(gt), dtype=bool)
    for d in range(len(boxes)):
        cand = np.where(free & (iou[d] >= IOU), iou[d], -1.0)
        g = int(np.argmax(cand))
        if cand[g] >= 0:
            tp[d], free[g] = True, False
    return tp


def ap_stat(tp: np.ndarray, img: np.ndarray, gt_count: np.ndarray) -> Stat:
    """Weighted AP of one class: ``nan`` in a resample without any of its boxes."""
    tpf = tp.astype(np.float64)

    def stat(w: np.ndarray) -> np.ndarray:
        npos = w @ gt_count
        wd = w[:, img]
        ctp, cfp = np.cumsum(wd * tpf, axis=1), np.cumsum(wd * (1.0 - tpf), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = ctp / npos[:, None]
            precision = np.where(ctp + cfp > 0, ctp / (ctp + cfp), 0.0)
        precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        ap = _read_at_recalls(np.nan_to_num(recall), precision)
        ap[npos == 0] = np.nan
        return ap

    return stat


def _read_at_recalls(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mean over the 101 recall points of the precision where each row first reaches it
    (0 where it never does): one ``searchsorted`` over rows laid end to end."""
    b, d = recall.shape
    if d == 0:
        return np.zeros(b)
    offset = 2.0 * np.arange(b)[:, None]  # recall is in [0, 1]: rows never overlap
    flat = (recall + offset).ravel()
    pos = np.searchsorted(flat, (RECALLS[None, :] + offset).ravel(), side="left").reshape(b, -1)
    pos -= d * np.arange(b)[:, None]
    got = pos < d
    picked = np.take_along_axis(precision, np.minimum(pos, d - 1), axis=1)
    return np.where(got, picked, 0.0).mean(axis=1)


def map_report(preds: Sequence[dict[str, torch.Tensor]],
               targets: Sequence[dict[str, torch.Tensor]], classes: Sequence[str],
               rs: Resampler) -> dict[str, Any]:
    """``map_50`` (mean over the classes with boxes in a resample) and ``ap_50_<class>``."""
    per_class = match(preds, targets, len(classes))
    intervals: dict[str, Interval] = {}
    undefined: dict[str, str] = {}
    drawn: list[tuple[float, np.ndarray]] = []
    for name, (_, tp, img, gt) in zip(classes, per_class, strict=True):
        if gt.sum() == 0:
            undefined[f"ap_50_{name}"] = (f"undefined: no {name!r} box among the "
                                          f"{len(targets)} validation images")
            continue
        drawn.append(rs.values(ap_stat(tp, img, gt)))  # each class's AP once
        intervals[f"ap_50_{name}"] = rs.summarise(*drawn[-1])
    if drawn:
        estimate = float(np.mean([e for e, _ in drawn]))
        values = macro_mean([v for _, v in drawn]) if rs.resamples else np.zeros(0)
        intervals = {"map_50": rs.summarise(estimate, values), **intervals}
    return {"intervals": {k: v.as_dict() for k, v in intervals.items()},
            "operating_points": {}, "undefined": undefined, "bootstrap": rs.describe()}
