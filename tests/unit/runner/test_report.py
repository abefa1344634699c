"""The held-out report a run writes (runner/report.py): the spec's evaluation settings win."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from runner.report import evaluation_report, reported_metrics, resamples_for, software_versions
from runner.tasks.base import EvalOutput
from schemas.spec import TrainingSpec

SHA = "0" * 64


def spec(label_mode: str, classes: list[str], **evaluation: Any) -> TrainingSpec:
    return TrainingSpec.model_validate({
        "task_id": "t1", "tenant": "default", "name": "x", "flow": "general",
        "task_type": "classification",
        "dataset": {"dataset_id": "d", "manifest_key": "k", "sha256": SHA,
                    "annotation_type": label_mode, "modality": "CT", "num_cases": 60},
        "classes": classes, "label_mode": label_mode,
        "preprocessing": {"image_size": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3},
        "model": {"entry_id": "resnet10t", "builder": "timm", "network": "resnet10t",
                  "pretrained": False, "num_classes": len(classes), "in_chans": 3},
        "hyperparameters": {"seed": 4}, "resources": {"gpus": 0}, "evaluation": evaluation})


def test_target_sensitivity_and_resamples_come_from_the_spec() -> None:
    rng = np.random.default_rng(0)
    y = torch.tensor(rng.random(60) < 0.4).long()
    p1 = torch.tensor(np.clip(rng.normal(0.3 + 0.4 * y.numpy(), 0.2), 0, 1)).float()
    ev = EvalOutput({}, torch.stack([1 - p1, p1], 1), y, [f"p{i // 3}" for i in range(60)])
    s = spec("single_label", ["normal", "finding"], target_sensitivity=0.9,
             bootstrap_resamples=150)
    assert resamples_for(s, 2000) == 150 and resamples_for(spec("single_label", ["a", "b"]),
                                                           300) == 300
    report = evaluation_report(s, ev, resamples_for(s, 2000))
    point = report["operating_points"]["finding"]
    assert point["rule"] == "target_sensitivity" and point["sensitivity"] >= 0.9
    assert report["bootstrap"] == {"method": "percentile bootstrap", "level": 0.95,
                                   "resamples": 150, "unit": "patient", "clusters": 20,
                                   "cases": 60, "seed": 4}
    assert report == evaluation_report(s, ev, 150)  # seeded: the same report again


def test_undefined_metrics_are_null_in_the_reported_metrics() -> None:
    targets = torch.zeros(10, 2)
    targets[:4, 0] = 1
    ev = EvalOutput({}, torch.rand(10, 2), targets)
    report = evaluation_report(spec("multi_label", ["sah", "edh"]), ev, 50)
    merged = reported_metrics({"auc_sah": 0.7, "auc": 0.7}, report)
    assert merged == {"auc_sah": 0.7, "auc": 0.7, "auc_edh": None}
    assert report["bootstrap"]["unit"] == "case"
    assert evaluation_report(spec("multi_label", ["sah"]), None, 50) == {}


def test_software_versions_name_the_stack() -> None:
    found = software_versions()
    assert {"python", "radtrain", "torch", "torchvision", "timm", "pydicom"} <= set(found)
    assert found["torch"].split("+")[0] == torch.__version__.split("+")[0]


def test_a_failing_report_never_fails_the_run() -> None:
    ev = EvalOutput({}, torch.rand(10, 2), torch.zeros(9, 2))  # rows that cannot match
    report = evaluation_report(spec("multi_label", ["sah", "edh"]), ev, 50)
    assert set(report) == {"report_error"} and report["report_error"]
