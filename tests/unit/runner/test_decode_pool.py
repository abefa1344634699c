"""The first epoch's decoding on every core (issue 16, runner/decode_pool.py): the pool
builds the same cache as one process, reports every failure at once, and keeps the
runner's decode memory budget."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imaging.budget import DecodeBudget, DecodeBusy, default_budget, set_default_budget
from imaging.reader import read_image
from imaging.transforms import preprocess, resize_uint8, to_uint8
from infra.settings import Settings
from infra.store import LocalStore
from radtrain.synthetic.ct import DEMO_WINDOWS, generate_dicom_dataset, synthetic_manifest
from runner.data import POOL_MIN_CASES, DatasetError, _build, prepare
from runner.decode_pool import (
    CaseJob,
    DecodePool,
    Recipe,
    SharedBudget,
    available_cpus,
    decode_case,
    resize_torch,
    resolve_workers,
)
from schemas.dataset import DatasetManifest
from schemas.spec import TrainingSpec

N = POOL_MIN_CASES + 8  # enough for the pool to start


class CopyingStore(LocalStore):
    """A store the runner must download from (not the plain local store)."""


def world(root: Path, n: int = N, store_type: type[LocalStore] = LocalStore
          ) -> tuple[LocalStore, DatasetManifest, TrainingSpec]:
    store = store_type(root / "store")
    cases = generate_dicom_dataset(root / "gen", n_cases=n, seed=0, size=48)
    for c in cases:
        store.put_file(f"datasets/ds/cases/{c.file}", root / "gen" / c.file)
    raw = json.dumps(synthetic_manifest("ds", "t", cases)).encode()
    sha = store.put_bytes("datasets/ds/manifest.json", raw).sha256
    spec = TrainingSpec.model_validate({
        "task_id": "t1", "tenant": "t", "name": "t", "flow": "general",
        "task_type": "classification",
        "dataset": {"dataset_id": "ds", "manifest_key": "datasets/ds/manifest.json",
                    "sha256": sha, "annotation_type": "single_label", "modality": "CT",
                    "num_cases": n},
        "classes": ["normal", "finding"], "label_mode": "single_label",
        "preprocessing": {"image_size": 32, "channels": 3, "windows": DEMO_WINDOWS,
                          "mean": [0.5], "std": [0.5]},
        "model": {"entry_id": "resnet10t", "builder": "timm", "network": "resnet10t",
                  "pretrained": False, "num_classes": 2, "in_chans": 3},
        "hyperparameters": {"image_size": 32}, "resources": {"gpus": 0}})
    return store, DatasetManifest.model_validate_json(raw), spec


@pytest.fixture
def budget() -> Any:
    saved = default_budget()
    yield set_default_budget
    set_default_budget(saved)


@pytest.mark.parametrize("store_type", [LocalStore, CopyingStore], ids=["in-place", "download"])
def test_the_pool_builds_the_cache_one_process_builds(tmp_path: Path,
                                                      store_type: type[LocalStore]) -> None:
    store, manifest, spec = world(tmp_path, store_type=store_type)
    seen: list[tuple[int, int]] = []
    pooled = prepare(spec, manifest, store, tmp_path / "a", lambda d, t: seen.append((d, t)),
                     workers=2)
    inline = prepare(spec, manifest, store, tmp_path / "b", workers=1)
    assert not pooled.cache_hit and pooled.x.shape == (N, 3, 32, 32)
    np.testing.assert_array_equal(np.asarray(pooled.x), np.asarray(inline.x))
    assert seen[-1] == (N, N) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    first = read_image(store.root / "datasets/ds/cases/case_0000.dcm")
    reference = to_uint8(preprocess(first, spec.preprocessing))
    assert np.abs(reference.astype(int) - pooled.x[0].astype(int)).max() <= 1
    assert prepare(spec, manifest, store, tmp_path / "a", workers=2).cache_hit
    in_memory = _build(spec, manifest, store, None, 2)  # runner/shards.py: no cache file
    np.testing.assert_array_equal(in_memory.x, np.asarray(inline.x))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [pooled.cache_path.name]
    assert list((tmp_path / "store" / "datasets/ds/cases").iterdir())  # never moved


def test_every_failure_is_reported_at_once_in_case_order(tmp_path: Path) -> None:
    store, manifest, spec = world(tmp_path)
    cases = tmp_path / "store" / "datasets/ds/cases"
    (cases / "case_0031.dcm").unlink()
    (cases / "case_0005.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    with pytest.raises(DatasetError) as info:
        prepare(spec, manifest, store, tmp_path / "cache", workers=2)
    text = info.value.problems
    assert len(text) == 2, text
    assert text[0].startswith("case_0005 (cases/case_0005.dcm): ") and "DICOM" in text[0]
    assert text[0].count("(cases/case_0005.dcm)") == 1  # named once, not "label: label: ..."
    assert text[1] == "case_0031 (cases/case_0031.dcm): image not found in the store"
    assert not list((tmp_path / "cache").iterdir())  # no half-written cache left behind


def test_the_workers_keep_the_runners_decode_budget(tmp_path: Path, budget: Any) -> None:
    store, manifest, spec = world(tmp_path)
    budget(DecodeBudget(request_bytes=4096, process_bytes=8192))
    with pytest.raises(DatasetError) as info:
        prepare(spec, manifest, store, tmp_path / "cache", workers=2)
    problems = info.value.problems
    assert len(problems) == N and all("limit for one image" in p for p in problems), problems[0]


def _hold(budget: SharedBudget, size: int, held: Any, release: Any) -> None:
    with budget.reserve(size):
        held.set()
        release.wait(10)


def test_a_shared_budget_counts_every_process() -> None:
    ctx = mp.get_context("fork")
    shared = SharedBudget(100, 150, 0.2, ctx.Condition(), ctx.Value("q", 0, lock=False))
    held, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(shared, 100, held, release))
    other.start()
    try:
        assert held.wait(10)
        assert shared.in_use == 100  # reserved by the other process
        with pytest.raises(DecodeBusy):
            with shared.reserve(60):
                pass
        with shared.reserve(50):
            assert shared.in_use == 150
    finally:
        release.set()
        other.join(10)
    assert shared.in_use == 0


@pytest.mark.parametrize(("side", "size"), [(64, 32), (96, 48), (70, 32), (40, 64)])
def test_torchs_resize_is_pillows(side: int, size: int) -> None:
    planes = np.random.default_rng(side).integers(0, 256, (3, side, side), dtype=np.uint8)
    diff = np.abs(resize_torch(planes, size).astype(int) - resize_uint8(planes, size))
    assert diff.max() <= (0 if side % size == 0 else 1)


def test_the_setting_names_the_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADTRAIN_RUNNER_DECODE_WORKERS", "3")
    assert resolve_workers(Settings().runner_decode_workers) == 3
    assert resolve_workers(Settings(runner_decode_workers=0).runner_decode_workers) == \
        available_cpus() >= 1
    with pytest.raises(ValueError):
        Settings(runner_decode_workers=-1)


def test_this_process_is_one_of_the_decode_workers(tmp_path: Path) -> None:
    """``workers`` cores: one fork fewer, this process decoding what the forked ones
    have no room for, on the budget they share; the same pixels as one process."""
    store, _, spec = world(tmp_path, n=12)
    recipe = Recipe(spec.preprocessing, False, len(spec.classes))
    jobs = [CaseJob(i, f"c{i}", (store.root / f"datasets/ds/cases/case_{i:04d}.dcm",))
            for i in range(12)]
    with DecodePool(3, recipe) as pool:
        assert pool._pool is not None and pool._pool._max_workers == 2  # type: ignore[attr-defined]
        assert isinstance(pool._budget, SharedBudget)
        submitted = [(pool.submit([job]), len(pool._queued)) for job in jobs]
        decoded = sorted((r for f, _ in submitted for r in f.result()), key=lambda r: r.index)
    assert max(queued for _, queued in submitted) <= DecodePool.QUEUED * 2
    for job, got in zip(jobs, decoded, strict=True):
        alone = decode_case(job, recipe)
        assert got.error is None and got.x is not None and alone.x is not None
        np.testing.assert_array_equal(got.x, alone.x)
