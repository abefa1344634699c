"""2.5D input (issue 15 item 2): neighbour slices as channels, from a series of slice
cases, a whole-series stack and a multi-frame image, through runner/data.py's cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imaging.reader import read_image
from imaging.transforms import ImageArray, to_uint8
from infra.store.local import LocalStore
from runner.data import cache_key, prepare
from runner.slices import adjacent_stack, adjacent_uint8, anatomical, frame_planes, neighbour_keys
from schemas.dataset import DatasetManifest
from schemas.spec import Preprocessing, TrainingSpec
from tests.support.series_data import ct_dataset, per_frame_positions, save

BRAIN = [{"name": "brain", "center": 40.0, "width": 80.0}]


def prep(slices: str = "adjacent", windows: list[dict[str, Any]] | None = None) -> Preprocessing:
    return Preprocessing.model_validate({"image_size": 16, "channels": 3,
                                         "windows": BRAIN if windows is None else windows,
                                         "mean": [0.5], "std": [0.5], "slices": slices})


def flat(hu: float, photometric: str = "MONOCHROME2") -> ImageArray:
    return ImageArray(np.full((8, 8), hu, np.float32), "CT", photometric)


def manifest(n_series: int = 3) -> DatasetManifest:
    cases = [{"case_id": f"c{i}", "images": [f"cases/c{i}.dcm"], "labels": ["normal"],
              "series": "S" if i < n_series else None} for i in range(5)]
    cases.append({"case_id": "stack", "images": [f"cases/k{i}.dcm" for i in range(4)],
                  "labels": ["finding"]})
    return DatasetManifest.model_validate({
        "id": "ds1", "tenant": "default", "name": "n", "annotation_type": "single_label",
        "modality": "CT", "classes": ["normal", "finding"], "cases": cases,
        "series": {"S": {"study_uid": "1", "series_uid": "S", "ordered_by": "position",
                         "cases": ["c2", "c0", "c1"]}}})


def test_neighbour_keys_follow_the_series_order_and_clamp() -> None:
    keys = neighbour_keys(manifest())
    assert keys["c2"] == ["cases/c2.dcm", "cases/c2.dcm", "cases/c0.dcm"]
    assert keys["c0"] == ["cases/c2.dcm", "cases/c0.dcm", "cases/c1.dcm"]
    assert keys["c1"] == ["cases/c0.dcm", "cases/c1.dcm", "cases/c1.dcm"]
    assert keys["c4"] == ["cases/c4.dcm"]  # not in a series: its frames, or itself
    assert keys["stack"] == ["cases/k1.dcm", "cases/k2.dcm", "cases/k3.dcm"]


def test_adjacent_stack_windows_each_neighbour_in_the_first_window() -> None:
    out = adjacent_stack([flat(0.0), flat(40.0), flat(80.0)], prep())
    assert out.shape == (3, 16, 16)
    assert [float(c.mean()) for c in out] == pytest.approx([0.0, 0.5, 1.0])
    inverted = adjacent_stack([flat(0.0, "MONOCHROME1")] * 3, prep())
    assert float(inverted.mean()) == pytest.approx(1.0)
    no_window = adjacent_stack([ImageArray(np.arange(64, dtype=np.float32).reshape(8, 8),
                                           "MR", "MONOCHROME2")] * 3, prep(windows=[]))
    assert float(no_window.max()) == pytest.approx(1.0) and float(no_window.min()) == 0.0
    with pytest.raises(ValueError, match="grayscale"):
        adjacent_stack([ImageArray(np.zeros((8, 8, 3), np.float32), "OT", "RGB")], prep())


def test_a_multi_frame_image_gives_its_neighbour_frames_in_position_order(
        tmp_path: Path) -> None:
    frames = np.stack([np.full((8, 8), v, np.float32) for v in (80.0, 0.0, 40.0, 120.0)])
    ds = per_frame_positions(ct_dataset(frames, position=None),
                             [(0, 0, 10), (0, 0, -10), (0, 0, 0), (0, 0, 20)])
    path = save(ds, tmp_path / "mf.dcm")
    image = anatomical(read_image(path), path)
    assert [float(f.mean()) for f in image.pixels] == [0.0, 40.0, 80.0, 120.0]
    assert float(image.frame().mean()) == 80.0  # the "current" input: the volume's middle
    planes = frame_planes(image)
    assert [float(p.mean()) for p in planes] == pytest.approx([40.0, 80.0, 120.0])
    out = adjacent_stack([image], prep())
    assert [float(c.mean()) for c in out] == pytest.approx([0.5, 1.0, 1.0])
    stored = frame_planes(read_image(path))  # without the header: as stored
    assert [float(p.mean()) for p in stored] == pytest.approx([0.0, 40.0, 120.0])


def spec_for(m: DatasetManifest, sha: str, slices: str) -> TrainingSpec:
    return TrainingSpec.model_validate({
        "task_id": "t1", "tenant": "default", "name": "t", "flow": "general",
        "task_type": "classification",
        "dataset": {"dataset_id": m.id, "manifest_key": "x", "sha256": sha,
                    "annotation_type": "single_label", "modality": "CT",
                    "num_cases": len(m.cases)},
        "classes": ["normal", "finding"], "label_mode": "single_label",
        "preprocessing": prep(slices).model_dump(),
        "model": {"entry_id": "resnet10t.c3_in1k", "builder": "timm", "network": "resnet10t",
                  "pretrained": False, "num_classes": 2, "in_chans": 3},
        "hyperparameters": {"epochs": 1, "image_size": 32}, "resources": {"gpus": 0}})


def test_the_runner_caches_neighbour_channels(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    hu = {"c0": 40.0, "c1": 80.0, "c2": 0.0, "c3": 20.0, "c4": 60.0}
    hu.update({f"k{i}": 20.0 * i for i in range(4)})
    for name, value in hu.items():
        path = save(ct_dataset(np.full((8, 8), value, np.float32)), tmp_path / f"{name}.dcm")
        store.put_file(f"datasets/ds1/cases/{name}.dcm", path, "application/dicom")
    m = manifest()
    sha = hashlib.sha256(json.dumps(m.model_dump(mode="json")).encode()).hexdigest()
    adjacent = prepare(spec_for(m, sha, "adjacent"), m, store, tmp_path / "cache", workers=2)
    means = np.asarray(adjacent.x, dtype=np.float32).mean(axis=(2, 3)) / 255.0
    assert means[0] == pytest.approx([0.0, 0.5, 1.0], abs=0.01)   # c0: c2 | c0 | c1
    assert means[2] == pytest.approx([0.0, 0.0, 0.5], abs=0.01)   # c2 is the first slice
    assert means[5] == pytest.approx([0.25, 0.5, 0.75], abs=0.01)  # the stack's k1 k2 k3
    assert adjacent.case_series[:3] == ["S", "S", "S"] and "S" in adjacent.series
    current = prepare(spec_for(m, sha, "current"), m, store, tmp_path / "cache", workers=2)
    assert cache_key(spec_for(m, sha, "current")) != cache_key(spec_for(m, sha, "adjacent"))
    assert not current.cache_hit
    assert np.asarray(current.x[0], dtype=np.float32).mean() / 255.0 == pytest.approx(0.5,
                                                                                      abs=0.01)


@pytest.mark.parametrize("windows", [None, []], ids=["brain", "min-max"])
def test_the_8_bit_stack_is_within_one_level_of_the_float_stack(
        windows: list[dict[str, Any]] | None) -> None:
    rng = np.random.default_rng(0)
    same = [ImageArray(rng.normal(40, 60, (40, 40)).astype(np.float32), "CT", "MONOCHROME2")
            for _ in range(3)]
    mixed = [same[0], ImageArray(rng.normal(40, 60, (30, 50)).astype(np.float32), "CT",
                                 "MONOCHROME1"), same[2]]
    frames = [ImageArray(rng.normal(40, 60, (5, 24, 24)).astype(np.float32), "CT",
                         "MONOCHROME2")]
    for images in (same, mixed, frames):
        for channels in (1, 3):
            p = prep(windows=windows).model_copy(update={"channels": channels})
            fast, ref = adjacent_uint8(images, p), to_uint8(adjacent_stack(images, p))
            assert fast.dtype == np.uint8 and fast.shape == ref.shape == (channels, 16, 16)
            assert np.abs(fast.astype(int) - ref.astype(int)).max() <= 1
