"""Issue 16: shards over the cache budget (runner/shards.py), the bounded disk cache
(runner/shard_cache.py) and the shard-aware order (runner/loader.py), with a real
LocalStore and a stand-in for the decoder (the integration test decodes real DICOM)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from infra.errors import PermanentError
from infra.store import LocalStore
from runner.data import _Arrays, cache_key
from runner.loader import epoch_order, windowed_order
from runner.shard_cache import BudgetTooSmall, ShardCache
from runner.shards import (
    SHARDS_IN_BUDGET,
    ShardedArray,
    case_bytes,
    plan_shards,
    prepare_sharded,
    prepare_within_budget,
)
from schemas.dataset import DatasetManifest
from schemas.spec import TrainingSpec

SIZE, N = 16, 60
ONE = 3 * SIZE * SIZE


def make_spec(n: int = N, label_mode: str = "single_label") -> TrainingSpec:
    masks = label_mode == "masks"
    return TrainingSpec.model_validate({
        "task_id": "t", "tenant": "default", "name": "n", "flow": "general",
        "task_type": "segmentation" if masks else "classification",
        "dataset": {"dataset_id": "ds", "manifest_key": "datasets/ds/manifest.json",
                    "sha256": "ab" * 32, "annotation_type": label_mode, "modality": "CT",
                    "num_cases": n},
        "classes": ["lesion"] if masks else ["normal", "finding"], "label_mode": label_mode,
        "preprocessing": {"image_size": SIZE, "channels": 3,
                          "windows": [{"name": "w", "center": 40.0, "width": 80.0}],
                          "mean": [0.5], "std": [0.5]},
        "model": {"entry_id": "m", "builder": "timm", "network": "resnet10t",
                  "pretrained": False, "num_classes": 1 if masks else 2, "in_chans": 3},
        "hyperparameters": {"image_size": 32},
        "resources": {"gpus": 0},
    })


def make_manifest(n: int = N, label_mode: str = "single_label") -> DatasetManifest:
    masks = label_mode == "masks"
    return DatasetManifest.model_validate({
        "id": "ds", "tenant": "default", "name": "n", "annotation_type": label_mode,
        "modality": "CT", "classes": ["lesion"] if masks else ["normal", "finding"],
        "cases": [{"case_id": f"c{i:03d}", "images": [f"cases/{i}.dcm"],
                   "labels": [] if masks else [["normal", "finding"][i % 2]],
                   "patient_id": f"p{i // 2}", **({"mask": f"masks/{i}.png"} if masks else {})}
                  for i in range(n)],
    })


def pixels(case_id: str) -> np.ndarray:
    """What the stand-in decoder gives a case: its number in every pixel."""
    return np.full((3, SIZE, SIZE), int(case_id[1:]), np.uint8)


class FakeBuild:
    """``_build``'s signature; counts the cases it decodes, fails on ``fail_on`` cases."""

    def __init__(self, fail_on: set[str] | None = None) -> None:
        self.decoded: list[str] = []
        self.calls = 0
        self.fail_on = fail_on or set()

    def __call__(self, spec: TrainingSpec, manifest: DatasetManifest, store: Any,
                 progress: Any, workers: int, out: np.ndarray | None = None) -> _Arrays:
        ids = [c.case_id for c in manifest.cases]
        if self.fail_on & set(ids):
            raise RuntimeError("decoder crashed")
        self.decoded += ids
        self.calls += 1
        x = np.stack([pixels(i) for i in ids])
        if out is not None:
            out[:] = x
            x = out
        if spec.label_mode == "masks":
            masks = np.stack([np.full((SIZE, SIZE), int(i[1:]) % 2, np.uint8) for i in ids])
            return _Arrays(x, None, masks)
        return _Arrays(x)


class RecordingStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts: list[str] = []

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> Any:
        self.puts.append(key)
        return super().put_bytes(key, data, content_type)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> Any:
        self.puts.append(key)
        return super().put_file(key, path, content_type)


BUDGET = N * ONE // 3  # the dataset is 3x the budget


def test_plan_sizes_shards_to_the_budget_and_groups_the_split() -> None:
    spec = make_spec()
    split = np.array(["val" if i % 5 == 0 else "train" for i in range(N)])
    plan = plan_shards(spec, N, BUDGET, split)
    assert plan.per_shard == BUDGET // SHARDS_IN_BUDGET // ONE
    assert plan.num_shards == -(-N // plan.per_shard)
    assert sorted(plan.layout.tolist()) == list(range(N))
    ranks = ["val" if i % 5 == 0 else "train" for i in plan.layout]
    assert ranks == sorted(ranks, key=lambda s: s != "train")  # train first, then val
    assert plan.prefix("k") != plan_shards(spec, N, BUDGET * 2, split).prefix("k")
    with pytest.raises(BudgetTooSmall, match="runner_cache_budget_bytes"):
        plan_shards(spec, N, ONE * 3, split)


def test_windowed_order_is_a_seeded_shard_aware_permutation() -> None:
    cases = np.arange(100)
    shard_ids = cases // 10

    def draw(seed: int) -> np.ndarray:
        return windowed_order(cases, shard_ids, torch.Generator().manual_seed(seed), 2)

    a, b = draw(1), draw(1)
    assert (a == b).all() and sorted(a.tolist()) == cases.tolist()
    assert not (a == draw(2)).all()
    for w in range(0, 100, 20):  # every 20 cases come from exactly 2 shards
        assert len(set((a[w:w + 20] // 10).tolist())) == 2


@pytest.fixture
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode 5 shards at a time, so a 60-case set takes several decoder runs."""
    monkeypatch.setattr("runner.shards.BUILD_MAX_BYTES", 5 * (BUDGET // SHARDS_IN_BUDGET))


@pytest.mark.usefixtures("small_groups")
def test_index_is_written_last_and_a_second_runner_reuses_the_set(tmp_path: Path) -> None:
    store, build = RecordingStore(tmp_path / "store"), FakeBuild()
    spec, manifest = make_spec(), make_manifest()
    data = prepare_sharded(spec, manifest, store, tmp_path / "a", BUDGET, build=build)
    assert not data.cache_hit and sorted(build.decoded) == [c.case_id for c in manifest.cases]
    assert data.shards is not None
    assert 1 < build.calls < len(data.shards.index["shards"])  # shards decoded in groups
    assert store.puts[-1].endswith("/index.json") and store.puts[-1].startswith(
        f"cache/{cache_key(spec)}/")
    for i, shard in enumerate(data.shards.index["shards"]):
        arrays = store.puts.index(shard["objects"]["x"]["key"])
        assert f"/shard-{i:05d}." in shard["objects"]["x"]["key"]
        assert arrays < store.puts.index(shard["objects"]["x"]["key"].split(".")[0] + ".json")
    again = FakeBuild()
    other = prepare_sharded(spec, manifest, store, tmp_path / "b", BUDGET, build=again)
    assert other.cache_hit and again.decoded == []
    idx = np.array([5, 0, 59, 17, 33])
    assert isinstance(other.x, ShardedArray)
    assert (other.x[idx] == np.stack([pixels(f"c{i:03d}") for i in idx])).all()
    assert (other.split == data.split).all() and (other.y == data.y).all()


@pytest.mark.usefixtures("small_groups")
def test_a_partial_set_is_finished_not_trusted(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    spec, manifest = make_spec(), make_manifest()
    crash = FakeBuild(fail_on={"c030"})
    with pytest.raises(RuntimeError):
        prepare_sharded(spec, manifest, store, tmp_path / "a", BUDGET, build=crash)
    built = set(crash.decoded)
    assert built and not any(k.endswith("index.json") for k in store.list("cache/"))
    first = sorted(k for k in store.list("cache/") if k.endswith(".x.npy"))[0]
    store.put_bytes(first, b"truncated")  # a shard whose size disagrees with its sidecar
    retry = FakeBuild()
    data = prepare_sharded(spec, manifest, store, tmp_path / "b", BUDGET, build=retry)
    per_shard = data.shards.index["shards"][0]["count"]
    assert len(retry.decoded) == N - len(built) + per_shard  # the rest and the bad one
    assert (np.asarray(data.x) == np.stack([pixels(c.case_id) for c in manifest.cases])).all()


def test_masks_targets_and_presence_come_from_the_shards(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    spec, manifest = make_spec(label_mode="masks"), make_manifest(label_mode="masks")
    budget = N * case_bytes(spec) // 3
    data = prepare_sharded(spec, manifest, store, tmp_path / "a", budget, build=FakeBuild())
    assert data.y[:, 0].tolist() == [float(i % 2) for i in range(N)]
    assert data.masks is not None and data.masks[np.array([3, 4])][:, 0, 0].tolist() == [1, 0]
    assert set(data.split.tolist()) >= {"train", "val"}


def test_prepare_streams_only_over_the_budget(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    spec, manifest = make_spec(), make_manifest()
    store = LocalStore(tmp_path / "store")
    monkeypatch.setattr("runner.data._build", FakeBuild())
    monkeypatch.setattr("runner.shards._build", FakeBuild())
    whole = prepare_within_budget(spec, manifest, store, tmp_path / "c", N * ONE)
    assert whole.shards is None and isinstance(whole.x, np.ndarray)
    assert store.list("cache/") == []
    streamed = prepare_within_budget(spec, manifest, store, tmp_path / "c", BUDGET)
    assert streamed.shards is not None and isinstance(streamed.x, ShardedArray)
    assert (streamed.split == whole.split).all() and (streamed.y == whole.y).all()
    assert (streamed.x[np.arange(N)] == np.asarray(whole.x)).all()


def test_epoch_order_streaming_is_deterministic(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    data = prepare_sharded(make_spec(), make_manifest(), store, tmp_path / "a", BUDGET,
                           build=FakeBuild())
    one = epoch_order(data, torch.Generator().manual_seed(3))
    two = epoch_order(data, torch.Generator().manual_seed(3))
    assert (one == two).all()
    assert sorted(one.tolist()) == data.indices("train").tolist()


def test_the_disk_cache_stays_within_its_capacity(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    infos = [store.put_bytes(f"o/{i}", bytes([i]) * 1000) for i in range(12)]
    cache = ShardCache(tmp_path / "cache", 3500, store)
    for info in infos + infos[:4]:
        path = cache.get(info.key, info.sha256, info.size)
        assert path.read_bytes() == bytes([int(info.key[2:])]) * 1000
        assert cache.used() <= 3500
    assert cache.peak <= 3500 and cache.downloads == 16
    cache.get(infos[3].key, infos[3].sha256, infos[3].size)  # the newest three stay
    assert cache.downloads == 16
    with pytest.raises(BudgetTooSmall):
        cache.get("o/big", "0" * 64, 4000)
    with pytest.raises(PermanentError, match="its index says 000000000000") as bad:
        cache.get(infos[0].key, "0" * 64, infos[0].size)
    assert bad.value.code == "cache_corrupt"
    assert not cache.local(infos[0].key).exists()


def test_index_json_names_every_array(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    data = prepare_sharded(make_spec(), make_manifest(), store, tmp_path / "a", BUDGET,
                           build=FakeBuild())
    index = json.loads(store.get_bytes(next(k for k in store.list("cache/")
                                            if k.endswith("index.json"))))
    assert sum(s["count"] for s in index["shards"]) == N
    assert all(store.exists(s["objects"]["x"]["key"]) for s in index["shards"])
    assert data.shards is not None and data.shards.index == index


def test_a_runner_with_a_larger_budget_reuses_smaller_shards(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    spec, manifest = make_spec(), make_manifest()
    built = prepare_sharded(spec, manifest, store, tmp_path / "a", BUDGET, build=FakeBuild())
    larger = FakeBuild()
    reused = prepare_sharded(spec, manifest, store, tmp_path / "b", 2 * BUDGET, build=larger)
    assert reused.cache_hit and larger.decoded == []
    assert reused.shards is not None and built.shards is not None
    assert reused.shards.plan.per_shard == built.shards.plan.per_shard
    smaller = FakeBuild()  # its budget cannot hold ten of those shards: it builds its own
    own = prepare_sharded(spec, manifest, store, tmp_path / "c", BUDGET // 2, build=smaller)
    assert not own.cache_hit and len(smaller.decoded) == N
    assert own.shards is not None and own.shards.plan.per_shard < built.shards.plan.per_shard
