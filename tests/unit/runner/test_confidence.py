"""Bootstrap intervals, operating points and calibration (runner/confidence.py, issue 15).

Checked against independent computations: torchmetrics' AUROC on the
explicitly resampled cases, torchmetrics' COCO mAP for the detection point
estimate, hand-made operating points; plus what makes them trustworthy:
seeded, patient-level when patients repeat, undefined rather than 0.5.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from runner.confidence import (
    Resampler,
    auc_stat,
    calibration_bins,
    classification_report,
    dice_report,
    operating_point,
    rate_stat,
)
from runner.confidence_detection import map_report
from runner.tasks.detection import mean_average_precision


def scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    return np.round(rng.normal(y * 1.0, 1.0), 1), y  # rounded: many ties


def test_weighted_auc_equals_torchmetrics_on_the_resampled_cases() -> None:
    s, y = scores(400)
    stat = auc_stat(s, y)
    assert stat(np.ones((1, 400)))[0] == pytest.approx(
        float(binary_auroc(torch.tensor(s), torch.tensor(y.astype(int)))), abs=1e-6)
    rs = Resampler.for_cases(None, 400, 5, seed=3)
    for row in next(rs.blocks()):
        idx = np.repeat(np.arange(400), row.astype(int))
        expected = float(binary_auroc(torch.tensor(s[idx]), torch.tensor(y[idx].astype(int))))
        assert stat(row[None])[0] == pytest.approx(expected, abs=1e-6)


def test_patient_bootstrap_keeps_a_patients_cases_together() -> None:
    patients = [f"p{i // 3}" for i in range(30)]  # 10 patients of 3 cases
    rs = Resampler.for_cases(patients, 30, 50, seed=0)
    assert rs.unit == "patient" and rs.n_groups == 10
    for w in rs.blocks():
        per_patient = w.reshape(len(w), 10, 3)
        assert (per_patient == per_patient[:, :, :1]).all()  # one count per patient
        assert (w.sum(1) == 30).all()  # 10 patients drawn, 3 cases each
    single = Resampler.for_cases([None] * 30, 30, 10, seed=0)
    assert single.unit == "case" and single.n_groups == 30


def test_intervals_are_seeded_and_shrink_with_more_cases() -> None:
    s, y = scores(200)
    a = Resampler.for_cases(None, 200, 500, seed=1).interval(auc_stat(s, y))
    b = Resampler.for_cases(None, 200, 500, seed=1).interval(auc_stat(s, y))
    c = Resampler.for_cases(None, 200, 500, seed=2).interval(auc_stat(s, y))
    assert a == b and a != c
    assert a.low is not None and a.high is not None and a.estimate is not None
    assert a.low < a.estimate < a.high and a.resamples == 500
    s2, y2 = scores(2000)
    big = Resampler.for_cases(None, 2000, 500, seed=1).interval(auc_stat(s2, y2))
    assert big.high is not None and big.low is not None
    assert big.high - big.low < (a.high - a.low) * 0.6


def test_two_thousand_resamples_of_two_thousand_cases_take_under_two_seconds() -> None:
    s, y = scores(2000)
    rs = Resampler.for_cases([f"p{i // 2}" for i in range(2000)], 2000, 2000, seed=0)
    started = time.perf_counter()
    rs.interval(auc_stat(s, y))
    rs.interval(rate_stat(s >= 0.5, y))
    assert time.perf_counter() - started < 2.0


def test_zero_resamples_give_the_estimate_without_an_interval() -> None:
    s, y = scores(50)
    iv = Resampler.for_cases(None, 50, 0, seed=0).interval(auc_stat(s, y))
    assert iv.estimate is not None and iv.low is None and iv.high is None


def test_youden_and_target_sensitivity_operating_points() -> None:
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    y = np.array([0, 0, 1, 0, 0, 1, 1, 1], dtype=bool)
    youden = operating_point(s, y)  # at 0.7: sensitivity 3/4, specificity 4/4 (J 0.75)
    assert youden is not None and youden.rule == "youden"
    assert youden.threshold == 0.7 and youden.sensitivity == 0.75 and youden.specificity == 1
    target = operating_point(s, y, target_sensitivity=0.95)  # only 0.3 catches all four
    assert target is not None and target.rule == "target_sensitivity"
    assert target.threshold == 0.3 and target.sensitivity == 1.0 and target.specificity == 0.5
    assert operating_point(s, np.zeros(8, dtype=bool)) is None
    tied = operating_point(s, np.array([0, 0, 1, 0, 1, 0, 1, 1], dtype=bool))
    # J 0.5 at 0.8, 0.6 and 0.3: the tie goes to the highest threshold (fewer false alarms)
    assert tied is not None and tied.threshold == 0.8


def test_a_class_without_positives_is_undefined_never_half() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((40, 3))
    targets = np.zeros((40, 3), dtype=np.int64)
    targets[:10, 0] = 1
    targets[5:20, 2] = 1  # class 1 ('epidural') never positive
    rs = Resampler.for_cases([f"p{i // 2}" for i in range(40)], 40, 200, seed=0)
    report = classification_report(probs, targets, "multi_label", ["sah", "epidural", "sdh"],
                                    rs)
    assert "auc_epidural" not in report["intervals"]
    assert report["undefined"]["auc_epidural"].startswith("undefined: no positive case")
    assert {"auc", "auc_sah", "auc_sdh", "op_sensitivity_sah", "op_specificity_sdh"} <= set(
        report["intervals"])
    assert set(report["operating_points"]) == {"sah", "sdh"}
    assert report["bootstrap"]["unit"] == "patient" and report["bootstrap"]["clusters"] == 20
    macro = report["intervals"]["auc"]["estimate"]
    assert macro == pytest.approx((report["intervals"]["auc_sah"]["estimate"]
                                   + report["intervals"]["auc_sdh"]["estimate"]) / 2)


def test_binary_report_uses_the_positive_class_and_its_operating_point() -> None:
    s, y = scores(300)
    p1 = 1 / (1 + np.exp(-s))
    probs = np.stack([1 - p1, p1], axis=1)
    rs = Resampler.for_cases(None, 300, 300, seed=0)
    report = classification_report(probs, y.astype(np.int64), "single_label",
                                   ["normal", "ptx"], rs, target_sensitivity=0.9)
    point = report["operating_points"]["ptx"]
    assert point["rule"] == "target_sensitivity" and point["sensitivity"] >= 0.9
    assert point["chosen_on"] == "validation"
    sens = report["intervals"]["op_sensitivity"]
    assert sens["estimate"] == pytest.approx(point["sensitivity"])
    assert sens["low"] <= sens["estimate"] <= sens["high"]
    assert report["intervals"]["auc"]["estimate"] == pytest.approx(
        float(binary_auroc(torch.tensor(p1), torch.tensor(y.astype(int)))), abs=1e-6)


def test_calibration_error_is_small_when_calibrated_and_large_when_overconfident() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    truth = rng.random(20000) < p
    assert calibration_bins(p, truth)[3] < 0.02
    over = np.where(p > 0.5, 0.99, 0.01)
    assert calibration_bins(over, truth)[3] > 0.2


def test_dice_interval_is_the_mean_of_per_case_dice() -> None:
    dice = np.linspace(0.5, 1.0, 40).reshape(20, 2)
    report = dice_report(dice, ["liver", "spleen"], Resampler.for_cases(None, 20, 200, 0))
    assert report["intervals"]["dice"]["estimate"] == pytest.approx(dice.mean())
    assert report["intervals"]["dice_spleen"]["estimate"] == pytest.approx(dice[:, 1].mean())


def _detections(n: int, seed: int) -> tuple[list[dict[str, torch.Tensor]],
                                            list[dict[str, torch.Tensor]]]:
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n):
        k = int(rng.integers(0, 3))
        xy = rng.uniform(0, 80, (k, 2))
        gt = np.concatenate([xy, xy + rng.uniform(8, 20, (k, 2))], axis=1)
        labels = rng.integers(1, 3, k)
        found = rng.random(k) < 0.8
        boxes = gt[found] + rng.normal(0, 2, (int(found.sum()), 4))
        extra = rng.uniform(0, 80, (1, 2))
        boxes = np.concatenate([boxes, np.concatenate([extra, extra + 10], axis=1)])
        preds.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                      "scores": torch.tensor(np.r_[rng.uniform(0.3, 1, int(found.sum())),
                                                   rng.uniform(0, 0.8)], dtype=torch.float32),
                      "labels": torch.tensor(np.r_[labels[found], rng.integers(1, 3)])})
        targets.append({"boxes": torch.tensor(gt, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(labels, dtype=torch.long)})
    return preds, targets


def test_map_interval_estimate_matches_torchmetrics_coco_map50() -> None:
    preds, targets = _detections(61, seed=2)
    expected = mean_average_precision(preds, targets)["map_50"]
    report = map_report(preds, targets, ["a", "b"], Resampler.for_cases(None, 61, 400, 0))
    iv = report["intervals"]["map_50"]
    assert iv["estimate"] == pytest.approx(expected, abs=1e-5)
    assert iv["low"] < iv["estimate"] < iv["high"]
    assert {"ap_50_a", "ap_50_b"} <= set(report["intervals"])
    # faster-coco-eval differs from the pycocotools algorithm by up to ~0.01 on some sets
    # (reading precision at the 101 recall points); never more than that here
    for seed in (1, 3, 5):
        p, t = _detections(61, seed)
        ours = map_report(p, t, ["a", "b"], Resampler.for_cases(None, 61, 0, 0))
        assert ours["intervals"]["map_50"]["estimate"] == pytest.approx(
            mean_average_precision(p, t)["map_50"], abs=0.015)
