"""Builders for contract objects used across the suite (pure data, no I/O)."""

from __future__ import annotations

from typing import Any

from schemas.dataset import DatasetSummary
from schemas.tasks import TaskRequested

SHA = "0" * 64


def request(**overrides: Any) -> TaskRequested:
    body: dict[str, Any] = {
        "task_id": "t1",
        "tenant": "default",
        "name": "ICH v1",
        "flow": "general",
        "task_type": "classification",
        "dataset_id": "ds1",
        "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
        "tuning": {"mode": "auto"},
    }
    body.update(overrides)
    return TaskRequested.model_validate(body)


def dataset(**overrides: Any) -> DatasetSummary:
    body: dict[str, Any] = {
        "id": "ds1",
        "tenant": "default",
        "name": "head CT",
        "annotation_type": "single_label",
        "modality": "CT",
        "classes": ["normal", "finding"],
        "num_cases": 120,
        "manifest_key": f"datasets/ds1/manifests/{SHA}.json",
        "manifest_sha256": SHA,
    }
    body.update(overrides)
    return DatasetSummary.model_validate(body)
