"""RSNA STR PE end to end on a generated series dataset (issue 15 items 1-3): import in the
challenge's layout, 2.5D input through the runner's cache, per-image training, and the
exam-level weighted log loss in the run's metrics."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import torch

from handlers.catalog.presets import get_preset
from handlers.datasets_import.base import ImportOptions
from handlers.datasets_import.pipeline import import_dataset
from infra.store import LocalStore
from runner.data import prepare
from runner.pe_metrics import exam_scores
from runner.train import train
from schemas.dataset import DatasetManifest, manifest_key
from schemas.spec import TrainingSpec
from tests.support.dataset_utils import MemoryDatasetRepo
from tests.support.series_data import PeExam, write_pe_dataset


def exams() -> list[PeExam]:
    out = []
    for i in range(12):
        if i % 2:
            out.append(PeExam([0, 1, 1, 0], {"leftsided_pe": 1, "rv_lv_ratio_gte_1": 1}))
        else:
            out.append(PeExam([0, 0, 0], {"negative_exam_for_pe": 1}))
    return out


def spec_for(manifest: DatasetManifest, sha: str) -> TrainingSpec:
    preset = get_preset("pulmonary-embolism")
    return TrainingSpec.model_validate({
        "task_id": "pe-1", "tenant": "default", "name": "pe", "flow": "specialized",
        "task_type": "classification",
        "dataset": {"dataset_id": manifest.id, "manifest_key": manifest_key(manifest.id, sha),
                    "sha256": sha, "annotation_type": "single_label", "modality": "CT",
                    "num_cases": len(manifest.cases)},
        "classes": list(preset.classes), "label_mode": "single_label",
        "preprocessing": {"image_size": 32, "channels": 3,
                          "windows": [w.model_dump() for w in preset.windows],
                          "mean": [0.5], "std": [0.5], "slices": "adjacent"},
        "model": {"entry_id": "resnet10t.c3_in1k", "builder": "timm", "network": "resnet10t",
                  "pretrained": False, "num_classes": 2, "in_chans": 3},
        "hyperparameters": {"epochs": 1, "batch_size": 16, "image_size": 32, "seed": 3,
                            "learning_rate": 0.003, "augmentation": "none"},
        "resources": {"gpus": 0}, "preset": preset.id, "metrics": list(preset.metrics)})


def test_pe_dataset_trains_per_image_and_scores_exams(tmp_path: Path) -> None:
    root = write_pe_dataset(tmp_path / "src", exams(), size=24, seed=1)
    store, repo = LocalStore(tmp_path / "store"), MemoryDatasetRepo()
    opts = ImportOptions(name="pe", format="rsna-pe", tenant="default", dataset_id="pe-ds")
    report = asyncio.run(import_dataset(store, repo, root, opts))  # type: ignore[arg-type]
    assert report.registered, report.problems
    summary = repo.saved["pe-ds"]
    manifest = DatasetManifest.model_validate_json(store.get_bytes(summary.manifest_key))
    assert len(manifest.cases) == 42 and len(manifest.series) == 12

    spec = spec_for(manifest, summary.manifest_sha256)
    data = prepare(spec, manifest, store, tmp_path / "cache")
    by_series: dict[str, set[str]] = {}
    for key, split in zip(data.case_series, data.split, strict=True):
        by_series.setdefault(str(key), set()).add(str(split))
    assert all(len(s) == 1 for s in by_series.values())  # no exam across splits

    result = train(spec, data, torch.device("cpu"), lambda u: None, lambda: False)
    loss = result.metrics["pe_weighted_log_loss"]
    assert math.isfinite(loss) and loss > 0
    assert "auc" in result.metrics
    assert result.evaluation is not None
    val = data.indices("val")
    again = exam_scores(spec, data, val, result.evaluation.preds, result.evaluation.targets)
    assert again["pe_weighted_log_loss"] == loss
    val_exams = {data.case_series[int(i)] for i in val}
    kinds = {manifest.series[str(k)].exam_labels["negative_exam_for_pe"] for k in val_exams}
    assert ("pe_exam_auc" in result.metrics) == (kinds == {0.0, 1.0})
    assert np.asarray(data.x).shape[1:] == (3, 32, 32)
