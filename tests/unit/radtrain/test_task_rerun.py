"""``radtrain tasks rerun``: the request repeats what the spec says, not today's defaults."""

from __future__ import annotations

from typing import Any

from radtrain.cli.task_rerun import rerun_request
from schemas.tasks import TaskRequest

SHA = "0" * 64


def spec_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "task_id": "t1", "tenant": "default", "name": "ich", "flow": "general",
        "task_type": "classification",
        "dataset": {"dataset_id": "d1", "manifest_key": "k", "sha256": SHA,
                    "annotation_type": "single_label", "modality": "CT", "num_cases": 60},
        "classes": ["normal", "bleed"], "label_mode": "single_label",
        "preprocessing": {"image_size": 64, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3,
                          "windows": [{"name": "brain", "center": 40, "width": 80},
                                      {"name": "mine", "center": 55.5, "width": 120},
                                      {"name": "bone", "center": 600, "width": 2800}]},
        "model": {"entry_id": "resnet10t", "builder": "timm", "network": "resnet10t",
                  "pretrained": False, "num_classes": 2, "in_chans": 3},
        "hyperparameters": {"seed": 4, "epochs": 3}, "resources": {"gpus": 0},
        "evaluation": {"target_sensitivity": 0.9, "bootstrap_resamples": 300}}
    return doc | over


def test_windows_slices_and_evaluation_are_carried_over() -> None:
    body = rerun_request(spec_doc(), "t1")
    TaskRequest.model_validate(body)
    assert body["evaluation"] == {"target_sensitivity": 0.9, "bootstrap_resamples": 300}
    assert body["preprocessing"]["windows"][1] == {"name": "mine", "center": 55.5,
                                                   "width": 120}
    assert body["preprocessing"]["slices"] == "current"
    assert body["tuning"]["hyperparameters"]["epochs"] == 3
    assert body["model"]["network"] == "resnet10t" and "rerun of task t1" in body["name"]


def test_defaults_add_nothing_and_a_preset_task_sends_no_windows() -> None:
    doc = spec_doc(evaluation={}, flow="specialized", preset="intracranial-hemorrhage")
    body = rerun_request(doc, "t1")
    assert "evaluation" not in body and "preprocessing" not in body
    assert body["preset"] == "intracranial-hemorrhage"
