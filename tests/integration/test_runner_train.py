"""Runner data -> train -> artifacts on real synthetic DICOM in a LocalStore (CPU, tiny)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from infra.store import LocalStore
from radtrain.synthetic.ct import DEMO_WINDOWS, generate_dicom_dataset, synthetic_manifest
from runner.artifacts import write_artifacts
from runner.data import DatasetError, PreparedData, prepare
from runner.model import WeightsError, build_model
from runner.train import ProgressUpdate, TrainingStopped, TrainResult, _Loop, train
from schemas.dataset import DatasetManifest
from schemas.spec import TrainingSpec
from schemas.tasks import Hyperparameters

DATASET = "ds-syn"
NETWORK = "mobilenetv3_small_100"


@dataclass
class World:
    root: Path
    store: LocalStore
    manifest: DatasetManifest
    spec: TrainingSpec


def make_spec(sha: str, n: int, **model: Any) -> TrainingSpec:
    return TrainingSpec.model_validate(
        {
            "task_id": "task-1",
            "tenant": "default",
            "name": "synthetic ICH",
            "flow": "specialized",
            "task_type": "classification",
            "dataset": {
                "dataset_id": DATASET,
                "manifest_key": f"datasets/{DATASET}/manifest.json",
                "sha256": sha,
                "annotation_type": "single_label",
                "modality": "CT",
                "num_cases": n,
            },
            "classes": ["normal", "finding"],
            "label_mode": "single_label",
            "preprocessing": {
                "image_size": 64,
                "channels": 3,
                "windows": DEMO_WINDOWS,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
            },
            "model": {
                "entry_id": NETWORK,
                "builder": "timm",
                "network": NETWORK,
                "pretrained": False,
                "num_classes": 2,
                "in_chans": 3,
                **model,
            },
            "hyperparameters": {"epochs": 2, "batch_size": 8, "image_size": 64, "seed": 1},
            "resources": {"gpus": 0},
        }
    )


def _val_logits(spec: TrainingSpec, model: torch.nn.Module,
                data: PreparedData) -> tuple[torch.Tensor, np.ndarray]:
    """The model's logits on the val split, normalised as the spec says, outside the runner."""
    val = data.indices("val")
    x = torch.from_numpy(np.asarray(data.x[val])).float() / 255.0
    c = x.shape[1]
    mean = torch.tensor(spec.preprocessing.mean * (c // len(spec.preprocessing.mean)))
    std = torch.tensor(spec.preprocessing.std * (c // len(spec.preprocessing.std)))
    with torch.inference_mode():
        logits = model.eval()((x - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)).float()
    return logits, np.asarray(data.y[val])


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC: the share of (positive, negative) pairs ranked right, ties half."""
    pos, neg = scores[positive.astype(bool)], scores[~positive.astype(bool)]
    assert len(pos) and len(neg)
    right = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(right / (len(pos) * len(neg)))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("runner")
    store = LocalStore(root / "store")
    cases = generate_dicom_dataset(root / "gen", n_cases=40, seed=5, size=80)
    for c in cases:
        store.put_file(f"datasets/{DATASET}/cases/{c.file}", root / "gen" / c.file)
    raw = json.dumps(synthetic_manifest(DATASET, "default", cases)).encode()
    info = store.put_bytes(f"datasets/{DATASET}/manifest.json", raw)
    manifest = DatasetManifest.model_validate_json(raw)
    return World(root, store, manifest, make_spec(info.sha256, len(cases)))


@pytest.fixture(scope="module")
def prepared(world: World) -> PreparedData:
    return prepare(world.spec, world.manifest, world.store, world.root / "cache")


@pytest.fixture(scope="module")
def trained(world: World, prepared: PreparedData) -> tuple[TrainResult, list[ProgressUpdate]]:
    updates: list[ProgressUpdate] = []
    result = train(world.spec, prepared, torch.device("cpu"), updates.append, lambda: False)
    return result, updates


def test_prepare_builds_then_hits_the_cache(world: World, prepared: PreparedData) -> None:
    assert not prepared.cache_hit
    assert prepared.x.shape == (40, 3, 64, 64) and prepared.x.dtype.name == "uint8"
    assert prepared.y.shape == (40,) and set(prepared.y.tolist()) == {0, 1}
    assert len(prepared.indices("train")) + len(prepared.indices("val")) == 40
    mtime = prepared.cache_path.stat().st_mtime_ns
    calls: list[tuple[int, int]] = []
    again = prepare(
        world.spec,
        world.manifest,
        world.store,
        world.root / "cache",
        lambda d, t: calls.append((d, t)),
    )
    assert again.cache_hit and again.cache_path == prepared.cache_path
    assert again.cache_path.stat().st_mtime_ns == mtime
    assert (again.x == prepared.x).all() and (again.split == prepared.split).all()
    assert calls[-1] == (40, 40)


def test_missing_image_is_reported_per_case(world: World, tmp_path: Path) -> None:
    cases = [*world.manifest.cases]
    cases[3] = cases[3].model_copy(update={"images": ["cases/nope.dcm"]})
    manifest = world.manifest.model_copy(update={"cases": cases})
    with pytest.raises(DatasetError, match=r"case_0003 \(cases/nope.dcm\): image not found"):
        prepare(world.spec, manifest, world.store, tmp_path)


def test_train_reports_progress_and_metrics(
    world: World, trained: tuple[TrainResult, list[ProgressUpdate]], prepared: PreparedData
) -> None:
    result, updates = trained
    steps_per_epoch = -(-len(prepared.indices("train")) // 8)
    assert len(updates) == 2 * steps_per_epoch + 2  # every step + each epoch end
    assert updates[-1].step == updates[-1].total_steps == 2 * steps_per_epoch
    epoch_ends = [u for u in updates if u.epoch_end]
    assert [u.epoch for u in epoch_ends] == [1, 2]
    assert all("auc" in u.metrics for u in epoch_ends)
    assert all(not u.metrics and u.throughput for u in updates if not u.epoch_end)
    # The reported (best-epoch) metrics are those of the returned model, recomputed here.
    logits, y = _val_logits(world.spec, result.model, prepared)
    probs = logits.softmax(dim=1).numpy()
    assert result.metrics["auc"] == pytest.approx(_auc(probs[:, 1], y == 1), abs=1e-6)
    assert result.metrics["accuracy"] == pytest.approx(float((probs.argmax(1) == y).mean()))
    assert result.metrics["val_loss"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))), rel=1e-4)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.best_epoch in (1, 2)


def test_should_stop_raises_training_stopped(world: World, prepared: PreparedData) -> None:
    with pytest.raises(TrainingStopped):
        train(world.spec, prepared, torch.device("cpu"), lambda u: None, lambda: True)


def test_artifacts_round_trip(
    world: World, trained: tuple[TrainResult, list[ProgressUpdate]], tmp_path: Path
) -> None:
    result, _ = trained
    artifacts = write_artifacts(world.store, world.spec, result, tmp_path / "work", attempt=3)
    by_name = {a.name: a for a in artifacts}
    assert set(by_name) == {"model.safetensors", "model.onnx", "metrics.json", "history.csv",
                            "spec.json", "model_card.md", "loss_curve.png", "metric_curve.png",
                            "roc.png", "confusion_matrix.png", "calibration.png",
                            "sample_predictions.png"}
    for a in artifacts:
        folder = "plots/" if a.name.endswith(".png") else ""
        assert a.key == f"runs/task-1/attempts/3/{folder}{a.name}"  # the attempt's own prefix
        assert hashlib.sha256(world.store.get_bytes(a.key)).hexdigest() == a.sha256
    run = "runs/task-1/attempts/3"
    metrics = json.loads(world.store.get_bytes(f"{run}/metrics.json"))
    assert metrics["metrics"] == result.metrics
    assert world.store.get_bytes(f"{run}/history.csv").decode().startswith("epoch,train_loss")
    spec = TrainingSpec.model_validate_json(world.store.get_bytes(f"{run}/spec.json"))
    assert {"radtrain", "torch", "torchvision", "timm", "pydicom"} <= set(spec.software)
    assert spec == world.spec.model_copy(update={"software": spec.software})  # + the runner's
    assert metrics["bootstrap"]["resamples"] == 2000 and "auc" in metrics["intervals"]

    fresh = build_model(world.spec.model)
    fresh.load_state_dict(load_file(str(world.store.root / by_name["model.safetensors"].key)))
    x = torch.randn(4, 3, 64, 64)
    fresh.eval()
    with torch.inference_mode():
        torch.testing.assert_close(fresh(x), result.model(x))

    weights = by_name["model.safetensors"]
    pinned = build_model(
        world.spec.model.model_copy(
            update={"weights_key": weights.key, "weights_sha256": weights.sha256, "num_classes": 5}
        ),
        world.store,
    )
    first = "conv_stem.weight"
    torch.testing.assert_close(pinned.state_dict()[first], result.model.state_dict()[first])
    with pytest.raises(WeightsError, match="sha256"):
        build_model(
            world.spec.model.model_copy(
                update={"weights_key": weights.key, "weights_sha256": "0" * 64}
            ),
            world.store,
        )


def test_weights_for_another_backbone_are_refused(world: World, tmp_path: Path) -> None:
    other = build_model(world.spec.model.model_copy(update={"network": "resnet10t"}))
    path = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    info = world.store.put_file("zoo/weights/resnet10t.safetensors", path)
    spec = world.spec.model.model_copy(
        update={"weights_key": info.key, "weights_sha256": info.sha256}
    )
    with pytest.raises(WeightsError, match=r"do not match the backbone|shape mismatch"):
        build_model(spec, world.store)


def _tiny_multilabel(tmp_path: Path) -> PreparedData:
    rng = np.random.default_rng(0)
    y = (rng.random((24, 3)) < 0.4).astype(np.float32)
    y[:3] = np.eye(3)  # every class present
    split = np.array(["train"] * 16 + ["val"] * 8)
    y[16:19], y[19:22] = np.eye(3), 1 - np.eye(3)  # val has positives and negatives per class
    return PreparedData(
        x=rng.integers(0, 255, (24, 3, 32, 32), dtype=np.uint8),
        y=y,
        case_ids=[f"c{i}" for i in range(24)],
        patient_ids=[None] * 24,
        split=split,
        classes=["a", "b", "c"],
        label_mode="multi_label",
        cache_path=tmp_path / "none.npz",
        cache_hit=False,
    )


def test_multi_label_bce_sgd_freeze_strong_aug(world: World, tmp_path: Path) -> None:
    spec = world.spec.model_copy(
        update={
            "classes": ["a", "b", "c"],
            "label_mode": "multi_label",
            "model": world.spec.model.model_copy(update={"num_classes": 3}),
            "hyperparameters": Hyperparameters(
                optimizer="sgd",
                schedule="constant",
                loss="bce",
                class_weighting="balanced",
                freeze_backbone_epochs=1,
                augmentation="strong",
                epochs=2,
                batch_size=8,
                warmup_epochs=1,
                learning_rate=0.01,
            ),
        }
    )
    data = _tiny_multilabel(tmp_path)
    result = train(spec, data, torch.device("cpu"), lambda u: None, lambda: False)
    assert {"auc", "auc_a", "auc_b", "auc_c", "accuracy", "val_loss"} <= set(result.metrics)
    logits, y = _val_logits(spec, result.model, data)
    probs = logits.sigmoid().numpy()
    per_class = [_auc(probs[:, k], y[:, k] == 1) for k in range(3)]
    assert [result.metrics[f"auc_{c}"] for c in "abc"] == pytest.approx(per_class, abs=1e-6)
    assert result.metrics["auc"] == pytest.approx(sum(per_class) / 3, abs=1e-6)
    assert result.metrics["accuracy"] == pytest.approx(float(((probs >= 0.5) == y).mean()))


def test_early_stopping_keeps_the_best_epoch(
    world: World, prepared: PreparedData, monkeypatch: pytest.MonkeyPatch
) -> None:
    aucs = iter([0.6, 0.9, 0.8, 0.7, 0.95, 0.99])
    monkeypatch.setattr(
        _Loop, "evaluate", lambda self: {"auc": next(aucs), "accuracy": 0.5, "val_loss": 1.0}
    )
    hp = world.spec.hyperparameters.model_copy(update={"epochs": 6, "early_stopping_patience": 2})
    spec = world.spec.model_copy(update={"hyperparameters": hp})
    result = train(spec, prepared, torch.device("cpu"), lambda u: None, lambda: False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == 2 and result.metrics["auc"] == 0.9
