"""The RSNA STR PE challenge metric (runner/pe_metrics.py) against a loss computed by hand,
the exam-level aggregation, and the hook from a finished validation pass."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from runner.pe_metrics import (
    EXAM_WEIGHTS,
    IMAGE_WEIGHT,
    Exam,
    challenge_log_loss,
    exam_metrics,
    exam_predictions,
    exam_scores,
    label_priors,
)
from schemas.dataset import SeriesInfo

LABELS = tuple(EXAM_WEIGHTS)


def truth(**ones: int) -> dict[str, float]:
    return {k: float(ones.get(k, 0)) for k in LABELS}


def test_the_published_weights() -> None:
    assert IMAGE_WEIGHT == 0.07361963
    assert EXAM_WEIGHTS["rv_lv_ratio_gte_1"] == 0.2346625767
    assert EXAM_WEIGHTS["central_pe"] == 0.1877300613
    assert sum(EXAM_WEIGHTS.values()) == pytest.approx(1.0, abs=1e-9)


def test_weighted_log_loss_matches_a_hand_computation() -> None:
    # exam A: images y = 1 1 0 0, p = .9 .6 .2 .5 -> q = 1/2; every exam label predicted 0.5
    # exam B: no positive image (q = 0: no image-level term); negative_exam_for_pe = 1
    #         predicted 0.8, the eight others 0 predicted 0.1
    a = Exam(np.array([1, 1, 0, 0]), np.array([0.9, 0.6, 0.2, 0.5]),
             truth(rightsided_pe=1, rv_lv_ratio_lt_1=1), dict.fromkeys(LABELS, 0.5))
    b = Exam(np.zeros(3), np.array([0.1, 0.3, 0.2]), truth(negative_exam_for_pe=1),
             {**dict.fromkeys(LABELS, 0.1), "negative_exam_for_pe": 0.8})
    w, all_w, neg_w = 0.07361963, 0.99999999992, 0.0736196319
    image = w * 0.5 * (-math.log(0.9) - math.log(0.6) - math.log(0.8) - math.log(0.5))
    exam_a = all_w * math.log(2)
    exam_b = neg_w * -math.log(0.8) + (all_w - neg_w) * -math.log(0.9)
    expected = (image + exam_a + exam_b) / (2 * all_w + w * 0.5 * 4)
    assert expected == pytest.approx(0.4021857490, abs=1e-9)
    assert challenge_log_loss([a, b]) == pytest.approx(expected, rel=1e-12)


def test_a_perfect_prediction_scores_near_zero_and_clips() -> None:
    e = Exam(np.array([1, 0]), np.array([1.0, 0.0]), truth(central_pe=1),
             {k: float(v) for k, v in truth(central_pe=1).items()})
    assert challenge_log_loss([e]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        challenge_log_loss([])


def test_exam_predictions_from_image_probabilities() -> None:
    priors = {**dict.fromkeys(("chronic_pe", "acute_and_chronic_pe", "central_pe",
                               "leftsided_pe", "rightsided_pe", "rv_lv_ratio_gte_1",
                               "rv_lv_ratio_lt_1"), 0.5), "indeterminate": 0.1}
    p = exam_predictions(np.array([0.1, 0.8, 0.3]), priors)
    assert p["rightsided_pe"] == pytest.approx(0.4)
    assert p["negative_exam_for_pe"] == pytest.approx(0.2 * 0.9)
    assert p["indeterminate"] == pytest.approx(0.2 * 0.1)


def test_priors_are_smoothed_frequencies() -> None:
    exams = [truth(rightsided_pe=1), truth(leftsided_pe=1), truth(negative_exam_for_pe=1),
             truth(indeterminate=1)]
    priors = label_priors(exams)
    assert priors["rightsided_pe"] == pytest.approx((1 + 0.5) / 3)  # 2 positive exams
    assert priors["indeterminate"] == pytest.approx((1 + 0.5) / 5)


def series_table() -> dict[str, SeriesInfo]:
    def info(key: str, cases: list[str], **ones: int) -> SeriesInfo:
        return SeriesInfo(study_uid=f"st{key}", series_uid=key, ordered_by="position",
                          cases=cases, exam_labels=truth(**ones))
    return {"A": info("A", ["a0", "a1"], rightsided_pe=1),
            "B": info("B", ["b0", "b1"], negative_exam_for_pe=1),
            "C": info("C", ["c0", "c1"], central_pe=1),
            "D": info("D", ["d0", "d1"], negative_exam_for_pe=1)}


def test_exam_metrics_over_the_validation_exams() -> None:
    series = series_table()
    case_series = ["A", "A", "B", "B", "C", "C", "D", "D"]
    split = np.array(["train"] * 4 + ["val"] * 4)
    val = np.arange(4, 8)
    prob, y = np.array([0.2, 0.9, 0.3, 0.1]), np.array([0.0, 1.0, 0.0, 0.0])
    out = exam_metrics(series, case_series, split, val, prob, y)
    assert out["pe_exam_auc"] == 1.0  # exam C (max .9) above exam D (max .3)
    priors = label_priors([series["A"].exam_labels, series["B"].exam_labels])
    exams = [Exam(y[:2], prob[:2], series["C"].exam_labels, exam_predictions(prob[:2], priors)),
             Exam(y[2:], prob[2:], series["D"].exam_labels, exam_predictions(prob[2:], priors))]
    assert out["pe_weighted_log_loss"] == pytest.approx(challenge_log_loss(exams))


def test_the_hook_reads_the_spec_and_the_prepared_data() -> None:
    series = series_table()
    data = SimpleNamespace(series=series, case_series=["A", "A", "B", "B", "C", "C", "D", "D"],
                           split=np.array(["train"] * 4 + ["val"] * 4))
    spec = SimpleNamespace(metrics=["auc", "pe_weighted_log_loss"], classes=["normal", "pe"],
                           label_mode="single_label")
    probs = np.array([[0.8, 0.2], [0.1, 0.9], [0.7, 0.3], [0.9, 0.1]])
    out = exam_scores(spec, data, np.arange(4, 8), probs, np.array([0, 1, 0, 0]))
    assert set(out) == {"pe_weighted_log_loss", "pe_exam_auc"}
    spec.metrics = ["auc"]
    assert exam_scores(spec, data, np.arange(4, 8), probs, np.array([0, 1, 0, 0])) == {}
