"""Detection and segmentation through the runner's data -> train -> artifacts path.

(Detection training itself runs end to end in tests/e2e/test_detseg_flow.py.)

Real synthetic DICOM with boxes / class-index mask PNGs in a LocalStore, the
zoo's builders (runner/builders.py via runner.model.build_model), tiny sizes
(64 px, a dozen cases, 1-2 epochs) so each trains in seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from infra.store import LocalStore
from runner.artifacts import write_artifacts
from runner.data import PreparedData, prepare
from runner.train import TrainResult, train
from schemas.dataset import DatasetManifest
from schemas.spec import TrainingSpec
from tests.support.synthetic_annotated import annotated_manifest, generate_annotated_dataset

CLASSES = ("lesion", "calcification")


def make(root: Path, kind: str, builder: str, network: str, n: int = 14,
         **hp: Any) -> tuple[LocalStore, DatasetManifest, TrainingSpec]:
    store = LocalStore(root / "store")
    ds = f"ds-{kind}"
    cases = generate_annotated_dataset(root / "gen", n, seed=3, kind=kind, size=72)  # type: ignore[arg-type]
    for path in (root / "gen").iterdir():
        store.put_file(f"datasets/{ds}/cases/{path.name}", path)
    raw = json.dumps(annotated_manifest(ds, "default", cases, kind)).encode()  # type: ignore[arg-type]
    info = store.put_bytes(f"datasets/{ds}/manifest.json", raw)
    spec = TrainingSpec.model_validate({
        "task_id": f"task-{kind}", "tenant": "default", "name": kind, "flow": "general",
        "task_type": "detection" if kind == "boxes" else "segmentation",
        "dataset": {"dataset_id": ds, "manifest_key": info.key, "sha256": info.sha256,
                    "annotation_type": kind, "modality": "CT", "num_cases": n},
        "classes": list(CLASSES), "label_mode": kind,
        "preprocessing": {"image_size": 64, "channels": 3,
                          "windows": [{"name": "brain", "center": 40, "width": 80},
                                      {"name": "subdural", "center": 80, "width": 200},
                                      {"name": "bone", "center": 600, "width": 2800}],
                          "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "model": {"entry_id": network, "builder": builder, "network": network,
                  "pretrained": False, "num_classes": len(CLASSES) + 1, "in_chans": 3},
        "hyperparameters": {"epochs": 1, "batch_size": 4, "image_size": 64, "seed": 0,
                            "learning_rate": 1e-3, **hp},
        "resources": {"gpus": 0},
    })
    return store, DatasetManifest.model_validate_json(raw), spec


def mean_dice_iou(spec: TrainingSpec, result: TrainResult,
                  data: PreparedData) -> tuple[float, float]:
    """Mean Dice and IoU over val images and foreground classes, recomputed outside the
    runner from the returned model's argmax masks (empty truth and prediction count as 1)."""
    val = data.indices("val")
    assert data.masks is not None and len(val) > 0
    x = torch.from_numpy(np.asarray(data.x[val])).float() / 255.0
    mean = torch.tensor(spec.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.preprocessing.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        pred = result.model.eval()((x - mean) / std).argmax(1).numpy()
    dice, iou = [], []
    for p, t in zip(pred, np.asarray(data.masks[val]), strict=True):
        for k in range(1, len(CLASSES) + 1):
            a, b = p == k, t == k
            inter, total, union = (a & b).sum(), a.sum() + b.sum(), (a | b).sum()
            dice.append(1.0 if total == 0 else 2 * inter / total)
            iou.append(1.0 if union == 0 else inter / union)
    return float(np.mean(dice)), float(np.mean(iou))


def check_artifacts(store: LocalStore, spec: TrainingSpec, result: TrainResult,
                    work: Path) -> dict[str, Any]:
    names = {a.name: a for a in write_artifacts(store, spec, result, work, attempt=1)}
    assert {"model.safetensors", "model.onnx", "metrics.json", "history.csv", "spec.json",
            "model_card.md", "loss_curve.png", "metric_curve.png",
            "sample_predictions.png"} <= set(names)
    assert "roc.png" not in names  # classification only
    metrics = json.loads(store.get_bytes(names["metrics.json"].key))
    assert metrics["onnx"]["passed"], metrics["onnx"]
    main = "map_50" if spec.label_mode == "boxes" else "dice"  # 95 % interval (issue 15)
    assert metrics["intervals"][main]["estimate"] is not None, metrics["intervals"]
    assert metrics["bootstrap"]["level"] == 0.95
    with Image.open(store.root / names["sample_predictions.png"].key) as img:
        assert img.width > 64 and img.height > 64
    card = store.get_bytes(names["model_card.md"].key).decode()
    assert spec.dataset.sha256 in card and "## Limits" in card
    return dict(metrics)


@pytest.fixture(scope="module")
def boxes_world(tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[LocalStore, TrainingSpec, PreparedData, Path]:
    root = tmp_path_factory.mktemp("det")
    store, manifest, spec = make(root, "boxes", "torchvision_detection",
                                 "fasterrcnn_mobilenet_v3_large_320_fpn")
    return store, spec, prepare(spec, manifest, store, root / "cache"), root


def test_boxes_are_cached_in_the_preprocessed_frame(
        boxes_world: tuple[LocalStore, TrainingSpec, PreparedData, Path]) -> None:
    _, _, data, _ = boxes_world
    assert data.boxes is not None and len(data.boxes) == len(data.case_ids)
    rows = np.concatenate(data.boxes)
    assert rows.shape[1] == 5 and (rows[:, :4] >= 0).all() and (rows[:, :4] <= 64).all()
    assert set(rows[:, 4].astype(int)) <= {1, 2}  # 1-based: 0 is the background
    assert any(len(b) == 0 for b in data.boxes)  # negatives kept
    # the box sits on the bright blob: its centre pixel is brighter than the image mean
    i = next(k for k, b in enumerate(data.boxes) if len(b))
    x1, y1, x2, y2 = data.boxes[i][0, :4]
    centre = data.x[i, 0, int((y1 + y2) / 2), int((x1 + x2) / 2)]
    assert centre > data.x[i, 0].mean()
    assert data.y.shape == (len(data.case_ids), 2)  # presence, for the split


@pytest.mark.parametrize(("builder", "network"), [
    ("timm_unet", "mobilenetv3_small_100"),
    ("torchvision_segmentation", "lraspp_mobilenet_v3_large"),
])
def test_segmentation_trains_evaluates_and_exports(tmp_path: Path, builder: str,
                                                   network: str) -> None:
    store, manifest, spec = make(tmp_path, "masks", builder, network, augmentation="strong")
    data = prepare(spec, manifest, store, tmp_path / "cache")
    assert data.masks is not None and data.masks.shape == (14, 64, 64)
    assert set(np.unique(data.masks)) <= {0, 1, 2} and (data.masks > 0).any()
    result = train(spec, data, torch.device("cpu"), lambda u: None, lambda: False)
    assert {"dice", "iou", "dice_lesion", "iou_calcification", "val_loss"} <= set(result.metrics)
    dice, iou = mean_dice_iou(spec, result, data)  # epochs=1: the reported epoch's model
    assert result.metrics["dice"] == pytest.approx(dice, abs=1e-6)
    assert result.metrics["iou"] == pytest.approx(iou, abs=1e-6)
    check_artifacts(store, spec, result, tmp_path / "work")


def test_bad_masks_are_reported_per_case(tmp_path: Path) -> None:
    store, manifest, spec = make(tmp_path, "masks", "timm_unet", "mobilenetv3_small_100", n=6)
    key = f"datasets/{spec.dataset.dataset_id}/cases/case_0001_mask.png"
    Image.fromarray(np.full((10, 10), 7, dtype=np.uint8)).save(tmp_path / "bad.png")
    store.put_file(key, tmp_path / "bad.png")
    with pytest.raises(Exception, match=r"case_0001 .*mask is 10x10"):
        prepare(spec, manifest, store, tmp_path / "cache")
