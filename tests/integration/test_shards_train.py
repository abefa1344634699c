"""Issue 16: a dataset ~3x the runner's cache budget trains from shards shared through a real
LocalStore, on real synthetic DICOM, with the local disk never over the budget (CPU, tiny)."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from infra.errors import PermanentError
from infra.settings import Settings
from infra.store import LocalStore
from radtrain.synthetic.ct import generate_dicom_dataset, synthetic_manifest
from runner.data import PreparedData, prepare
from runner.job import run_job
from runner.shards import ShardedArray, case_bytes, prepare_within_budget
from runner.train import ProgressUpdate, TrainingStopped, train
from schemas.dataset import DatasetManifest
from schemas.spec import TrainingSpec
from tests.integration.test_runner_train import DATASET, make_spec

N, SIZE = 72, 128
BUDGET = 1 << 20  # the settings' lower bound; the decoded dataset is ~3.4x it


@dataclass
class World:
    root: Path
    store: LocalStore
    manifest: DatasetManifest
    spec: TrainingSpec


def _disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("shards")
    store = LocalStore(root / "store")
    cases = generate_dicom_dataset(root / "gen", n_cases=N, seed=7, size=SIZE)
    for c in cases:
        store.put_file(f"datasets/{DATASET}/cases/{c.file}", root / "gen" / c.file)
    raw = json.dumps(synthetic_manifest(DATASET, "default", cases)).encode()
    sha = store.put_bytes(f"datasets/{DATASET}/manifest.json", raw).sha256
    spec = make_spec(sha, N)
    spec = spec.model_copy(update={
        "preprocessing": spec.preprocessing.model_copy(update={"image_size": SIZE}),
        "hyperparameters": spec.hyperparameters.model_copy(update={
            "image_size": SIZE, "epochs": 1})})
    return World(root, store, DatasetManifest.model_validate_json(raw), spec)


@pytest.fixture(scope="module")
def streamed(world: World) -> PreparedData:
    assert N * case_bytes(world.spec) > 3 * BUDGET
    return prepare_within_budget(world.spec, world.manifest, world.store,
                                 world.root / "runner-a", BUDGET)


def test_streamed_data_equals_the_cached_data(world: World, streamed: PreparedData) -> None:
    whole = prepare(world.spec, world.manifest, world.store, world.root / "whole")
    assert whole.shards is None and streamed.shards is not None
    assert isinstance(streamed.x, ShardedArray) and not streamed.cache_hit
    order = np.random.default_rng(0).permutation(N)
    assert (streamed.x[order] == np.asarray(whole.x)[order]).all()
    assert (streamed.split == whole.split).all() and (streamed.y == whole.y).all()
    assert streamed.shards.cache.peak <= BUDGET
    assert _disk(world.root / "runner-a") <= BUDGET


def test_training_streams_within_the_budget(world: World, streamed: PreparedData) -> None:
    updates: list[ProgressUpdate] = []
    result = train(world.spec, streamed, torch.device("cpu"), updates.append, lambda: False)
    assert streamed.shards is not None
    assert "auc" in result.metrics and result.samples is not None
    assert result.evaluation is not None  # validation saw every one of its cases
    val = streamed.indices("val")
    assert len(np.asarray(result.evaluation.preds)) == len(val)
    assert (np.asarray(result.evaluation.targets) == streamed.y[val]).all()
    assert updates[-1].epoch_end and updates[-1].step == updates[-1].total_steps
    assert streamed.shards.cache.downloads > 0  # it did evict and fetch back
    assert streamed.shards.cache.peak <= BUDGET
    assert _disk(world.root / "runner-a") <= BUDGET


def test_cancelling_stops_the_stream(world: World, streamed: PreparedData) -> None:
    threads = threading.active_count()
    steps: list[int] = []
    with pytest.raises(TrainingStopped, match="cancelled"):
        train(world.spec, streamed, torch.device("cpu"), lambda u: steps.append(u.step),
              lambda: "cancelled" if len(steps) >= 2 else None)
    assert len(steps) == 2
    assert not any(t.name == "radtrain-shard-stream" for t in threading.enumerate())
    assert threading.active_count() <= threads + 1  # at most the cache's fetch thread


def test_a_second_runner_reuses_the_set_through_run_job(world: World,
                                                        streamed: PreparedData) -> None:
    """The runner's own path (settings -> run_job): no decoding, the index found."""
    settings = Settings(cache_dir=world.root / "runner-b", work_dir=world.root / "work",
                        runner_cache_budget_bytes=BUDGET, eval_bootstrap_resamples=0)
    before = {k for k in world.store.list("cache/")}
    result = run_job(world.spec, world.store, settings, "cpu", lambda u: None, lambda: None)
    assert "auc" in result.metrics and result.artifacts
    assert {k for k in world.store.list("cache/")} == before  # nothing rebuilt
    assert _disk(world.root / "runner-b") <= BUDGET
    assert os.listdir(world.root / "runner-b") == ["shards"]


def test_several_processes_over_the_budget_fail_clearly(world: World,
                                                        streamed: PreparedData) -> None:
    settings = Settings(cache_dir=world.root / "runner-c", work_dir=world.root / "work",
                        runner_cache_budget_bytes=BUDGET, ddp_cpu_processes_max=2)
    spec = world.spec.model_copy(update={
        "resources": world.spec.resources.model_copy(update={"gpus": 2})})
    with pytest.raises(PermanentError, match="runner_cache_budget_bytes") as err:
        run_job(spec, world.store, settings, "cpu", lambda u: None, lambda: None)
    assert err.value.code == "resources_unavailable"
