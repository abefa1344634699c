"""A rerun of a finished task reproduces its metrics on the same device and seed (issue 15
item 8; ``radtrain tasks rerun`` builds its request with radtrain/cli/task_rerun.py).

The original task runs through enrich and the runner (CPU, tiny); its
``spec.json`` becomes the rerun's request exactly as the CLI builds it; that
request is enriched against the same dataset and trained again. The spec's
resolved parts must be identical, the software versions recorded, and the
metrics and their bootstrap intervals equal within a small tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from handlers.enrich import enrich
from handlers.weights_index import StoreWeightsIndex
from infra.store import LocalStore
from radtrain.cli.task_rerun import rerun_request
from radtrain.synthetic.ct import generate_dicom_dataset, synthetic_manifest
from runner.artifacts import write_artifacts
from runner.data import prepare
from runner.train import train
from schemas.dataset import DatasetManifest, DatasetSummary
from schemas.spec import TrainingSpec
from schemas.tasks import TaskRequested
from tests.support.factories import request

DATASET = "ct-rerun"
TOLERANCE = 1e-4


def _run(store: LocalStore, spec: TrainingSpec, manifest: DatasetManifest, work: Path
         ) -> tuple[dict[str, Any], dict[str, Any]]:
    data = prepare(spec, manifest, store, work / "cache")
    result = train(spec, data, torch.device("cpu"), lambda _: None, lambda: False, store=store)
    by_name = {a.name: a for a in write_artifacts(store, spec, result, work / "out", attempt=1)}
    return (json.loads(store.get_bytes(by_name["metrics.json"].key)),
            json.loads(store.get_bytes(by_name["spec.json"].key)))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[LocalStore, DatasetSummary, DatasetManifest, Path]:
    root = tmp_path_factory.mktemp("rerun")
    store = LocalStore(root / "store")
    cases = generate_dicom_dataset(root / "gen", n_cases=40, seed=3, size=64)
    for c in cases:
        store.put_file(f"datasets/{DATASET}/cases/{c.file}", root / "gen" / c.file)
    raw = json.dumps(synthetic_manifest(DATASET, "default", cases)).encode()
    info = store.put_bytes(f"datasets/{DATASET}/manifest.json", raw)
    summary = DatasetSummary(id=DATASET, tenant="default", name="ct",
                             annotation_type="single_label", modality="CT",
                             classes=["normal", "finding"], num_cases=40,
                             manifest_key=info.key, manifest_sha256=info.sha256)
    return store, summary, DatasetManifest.model_validate_json(raw), root


def _close(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        if isinstance(v, dict):
            _close(v, b[k])
        elif isinstance(v, float):
            assert b[k] == pytest.approx(v, abs=TOLERANCE), k
        else:
            assert b[k] == v, k


def test_a_rerun_from_spec_json_reproduces_the_metrics_on_cpu(
        world: tuple[LocalStore, DatasetSummary, DatasetManifest, Path]) -> None:
    store, summary, manifest, root = world
    weights = StoreWeightsIndex(store, hf_cache=root / "no-hf-cache")
    tuning = {"epochs": 2, "batch_size": 8, "image_size": 32, "learning_rate": 3e-3,
              "warmup_epochs": 0, "augmentation": "light", "seed": 7}
    cmd = request(task_id="t-orig", dataset_id=DATASET,
                  model={"mode": "manual", "network": "resnet10t", "pretrained": False},
                  tuning={"mode": "manual", "hyperparameters": tuning})
    first = enrich(cmd, summary, weights)
    metrics1, spec_doc = _run(store, first, manifest, root / "first")
    assert {"radtrain", "torch", "torchvision", "timm", "pydicom"} <= set(spec_doc["software"])

    body = rerun_request(spec_doc, "t-orig")
    again = enrich(TaskRequested.model_validate({**body, "task_id": "t-rerun",
                                                 "tenant": "default"}), summary, weights)
    for part in ("dataset", "classes", "label_mode", "preprocessing", "model",
                 "hyperparameters", "evaluation", "preset_ref"):
        assert getattr(again, part) == getattr(first, part), part
    metrics2, spec_doc2 = _run(store, again, manifest, root / "second")
    assert spec_doc2["software"] == spec_doc["software"]
    for key in ("metrics", "intervals", "operating_points", "calibration", "bootstrap"):
        _close(metrics1[key], metrics2[key])
    assert metrics1["best_epoch"] == metrics2["best_epoch"]
