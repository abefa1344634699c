"""RSNA STR pulmonary-embolism scoring: exam-level aggregation and the challenge's
weighted log loss (issue 15 item 3), beside the image- and exam-level AUC.

The metric, as the RSNA STR Pulmonary Embolism Detection challenge (Kaggle, 2020)
defines it on its Evaluation page
(https://www.kaggle.com/competitions/rsna-str-pulmonary-embolism-detection/overview/evaluation),
and as the host-endorsed reimplementation computes it
(https://www.kaggle.com/code/khyeh0719/0929-updated-rsna-competition-metric):

* exam level, for exam i and each of the nine labels j:
  ``L_ij = -w_j * [y_ij log p_ij + (1 - y_ij) log(1 - p_ij)]`` with the weights
  ``EXAM_WEIGHTS`` below;
* image level, for image k of exam i: ``L_ik = -w * q_i * [y_ik log p_ik + (1 - y_ik)
  log(1 - p_ik)]`` with ``w = 0.07361963`` and ``q_i = m_i / n_i`` the fraction of
  positive images in the exam (so negative exams add no image-level loss);
* total: the sum of all those losses divided by the sum of all their weights
  (``sum_i sum_j w_j + sum_i sum_k w * q_i``); predictions are clipped to
  [1e-15, 1 - 1e-15] as Kaggle's log loss does.

A per-image model predicts ``pe_present_on_image`` only; the exam-level predictions
are derived (``exam_predictions``): the exam's PE probability is the maximum of its
images' (a positive exam has at least one positive image), the labels that describe
a PE (side, chronicity, RV/LV ratio) are that probability times their frequency among
the training split's positive exams, ``indeterminate`` the training frequency times
the probability of no PE, and ``negative_exam_for_pe`` the rest. That is a baseline,
said as such in the model card: the challenge's exam labels need an exam-level model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EXAM_WEIGHTS", "IMAGE_WEIGHT", "PE_METRICS", "Exam", "challenge_log_loss",
           "exam_metrics", "exam_predictions", "exam_scores"]

IMAGE_WEIGHT = 0.07361963
"""``pe_present_on_image``, scaled by q_i per exam (Kaggle RSNA STR PE evaluation page)."""
EXAM_WEIGHTS: Mapping[str, float] = {
    "negative_exam_for_pe": 0.0736196319,
    "indeterminate": 0.09202453988,
    "chronic_pe": 0.1042944785,
    "acute_and_chronic_pe": 0.1042944785,
    "central_pe": 0.1877300613,
    "leftsided_pe": 0.06257668712,
    "rightsided_pe": 0.06257668712,
    "rv_lv_ratio_gte_1": 0.2346625767,
    "rv_lv_ratio_lt_1": 0.0782208589,
}
"""The nine exam-level label weights, as published on the same evaluation page."""
PE_DESCRIPTORS = ("chronic_pe", "acute_and_chronic_pe", "central_pe", "leftsided_pe",
                  "rightsided_pe", "rv_lv_ratio_gte_1", "rv_lv_ratio_lt_1")
PE_METRICS = frozenset({"pe_weighted_log_loss", "pe_exam_auc"})
"""Metric names a preset may ask for (handlers/catalog/presets.py REPORTABLE)."""
EPS = 1e-15


@dataclass(frozen=True)
class Exam:
    """One exam: its images' truth and predictions, its labels and their predictions."""

    image_truth: np.ndarray
    image_prob: np.ndarray
    exam_truth: Mapping[str, float]
    exam_prob: Mapping[str, float]


def _bce(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def challenge_log_loss(exams: Sequence[Exam]) -> float:
    """The challenge's weighted log loss over ``exams`` (see the module docstring)."""
    loss = weight = 0.0
    for exam in exams:
        y = np.asarray(exam.image_truth, dtype=np.float64)
        if y.size:
            q = float(y.mean())
            loss += IMAGE_WEIGHT * q * float(_bce(exam.image_prob, y).sum())
            weight += IMAGE_WEIGHT * q * y.size
        for label, w in EXAM_WEIGHTS.items():
            loss += w * float(_bce(np.array([exam.exam_prob[label]]),
                                   np.array([exam.exam_truth[label]]))[0])
            weight += w
    if weight <= 0:
        raise ValueError("no exam to score")
    return loss / weight


def label_priors(train_exams: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Frequencies on the training exams, smoothed (+0.5 / +1) so none is 0 or 1:
    each PE descriptor among positive exams, ``indeterminate`` among all."""
    positive = [e for e in train_exams
                if not e.get("negative_exam_for_pe") and not e.get("indeterminate")]
    out = {k: (sum(e.get(k, 0.0) for e in positive) + 0.5) / (len(positive) + 1)
           for k in PE_DESCRIPTORS}
    out["indeterminate"] = (sum(e.get("indeterminate", 0.0) for e in train_exams) + 0.5) / (
        len(train_exams) + 1)
    return out


def exam_predictions(image_prob: np.ndarray, priors: Mapping[str, float]) -> dict[str, float]:
    """The nine exam-level predictions derived from per-image PE probabilities."""
    p_pe = float(np.max(image_prob)) if len(image_prob) else 0.0
    out = {k: p_pe * priors[k] for k in PE_DESCRIPTORS}
    out["indeterminate"] = (1 - p_pe) * priors["indeterminate"]
    out["negative_exam_for_pe"] = (1 - p_pe) * (1 - priors["indeterminate"])
    return out


def _auc(score: np.ndarray, truth: np.ndarray) -> float | None:
    """Mann-Whitney AUC (ties count half); None without both outcomes."""
    pos, neg = score[truth > 0], score[truth <= 0]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def exam_metrics(series: Mapping[str, Any], case_series: Sequence[str | None],
                 split: np.ndarray, val: np.ndarray, prob: np.ndarray,
                 truth: np.ndarray) -> dict[str, float]:
    """``pe_weighted_log_loss`` and ``pe_exam_auc`` over the validation exams.

    ``series``: the manifest's series table (``SeriesInfo`` with ``exam_labels``);
    ``case_series``/``split``: per case of the dataset; ``val``: the validation case
    indices, in the order of ``prob``/``truth`` (per-image PE probability and 0/1).
    Empty when no validation case belongs to a labelled exam.
    """
    labelled = {k for k, s in series.items() if set(EXAM_WEIGHTS) <= set(s.exam_labels)}
    train = {case_series[int(i)] for i in np.flatnonzero(split == "train")} & labelled
    priors = label_priors([series[k].exam_labels for k in sorted(k for k in train if k)])
    members: dict[str, list[int]] = {}
    for pos, i in enumerate(val):
        key = case_series[int(i)]
        if key in labelled:
            members.setdefault(key, []).append(pos)
    if not members:
        return {}
    exams = []
    for key, rows in sorted(members.items()):
        p, y = prob[rows], truth[rows]
        exams.append(Exam(y, p, series[key].exam_labels, exam_predictions(p, priors)))
    out = {"pe_weighted_log_loss": challenge_log_loss(exams)}
    exam_score = np.array([float(np.max(e.image_prob)) for e in exams])
    exam_truth = np.array([float(not e.exam_truth["negative_exam_for_pe"]
                                 and not e.exam_truth["indeterminate"]) for e in exams])
    auc = _auc(exam_score, exam_truth)
    if auc is not None:
        out["pe_exam_auc"] = auc
    return out


def exam_scores(spec: Any, data: Any, val: np.ndarray, probs: Any, targets: Any
                ) -> dict[str, float]:
    """The PE metrics a spec asks for (``spec.metrics``), from the final validation pass:
    ``data`` is runner/data.py's PreparedData, ``probs``/``targets`` the evaluation's."""
    if not PE_METRICS & set(spec.metrics) or not data.series:
        return {}
    k = spec.classes.index("pe") if "pe" in spec.classes else len(spec.classes) - 1
    p = np.asarray(probs, dtype=np.float64)[:, k]
    t = np.asarray(targets)
    truth = (t == k) if spec.label_mode == "single_label" else t[:, k] > 0
    return exam_metrics(data.series, data.case_series, data.split, np.asarray(val), p,
                        truth.astype(np.float64))
