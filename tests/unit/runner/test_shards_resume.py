"""Issue 16: a run streaming from shards, stopped mid-epoch and resumed from its state, ends
where the uninterrupted streaming run ends (the shard-aware order is the loop's, saved in
the checkpoint state), on another runner with its own empty disk cache."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from infra.store import LocalStore
from runner.checkpoint import State
from runner.data import PreparedData, _Arrays
from runner.shards import prepare_sharded
from runner.train import TrainingStopped, TrainOptions, TrainResult, train
from schemas.dataset import DatasetManifest
from schemas.spec import TrainingSpec
from tests.unit.runner.test_checkpoint_resume import assert_same_run, tiny_data, tiny_spec

N = 24
BUDGET = N * 3 * 32 * 32 // 2  # the decoded set is twice the budget


class MemorySink:
    """The loop's checkpoint sink, kept in memory (a snapshot of each state)."""

    def __init__(self) -> None:
        self.saved_epoch: int | None = None
        self.last: State | None = None

    def save(self, state: State) -> bool:
        self.last = copy.deepcopy(state)
        self.saved_epoch = int(state["epoch"])
        return True


def streamed(tmp_path: Path) -> PreparedData:
    """tiny_data's learnable pixels, built into shards by a stand-in decoder."""
    x = np.asarray(tiny_data(tmp_path).x)
    manifest = DatasetManifest.model_validate({
        "id": "ds", "tenant": "default", "name": "n", "annotation_type": "single_label",
        "modality": "CT", "classes": ["normal", "finding"],
        "cases": [{"case_id": f"c{i}", "images": [f"cases/{i}.dcm"],
                   "labels": [["normal", "finding"][i % 2]]} for i in range(N)]})

    def build(spec: TrainingSpec, sub: DatasetManifest, store: Any, progress: Any,
              workers: int, out: np.ndarray | None = None) -> _Arrays:
        return _Arrays(np.stack([x[int(c.case_id[1:])] for c in sub.cases]))

    data = prepare_sharded(tiny_spec(), manifest, LocalStore(tmp_path / "store"),
                           tmp_path / "cache", BUDGET, build=build)
    assert data.shards is not None and len(data.indices("train")) >= 16
    return data


def run(data: PreparedData, sink: MemorySink | None = None, stop_at: int | None = None,
        resume: State | None = None) -> TrainResult:
    steps: list[int] = []
    return train(tiny_spec(), data, torch.device("cpu"),
                 lambda u: steps.append(u.step) if not u.epoch_end else None,
                 lambda: "shutdown" if stop_at is not None and len(steps) >= stop_at else None,
                 options=TrainOptions(checkpointer=sink, resume=resume))


def test_a_streaming_run_resumes_exactly(tmp_path: Path) -> None:
    data = streamed(tmp_path)
    plain = run(data)
    sink = MemorySink()
    with pytest.raises(TrainingStopped):
        run(data, sink, stop_at=5)
    assert sink.last is not None and sink.last["order"] is not None  # stopped mid-epoch
    resumed = run(streamed(tmp_path / "other-runner"), resume=sink.last)
    assert resumed.resumed_from_epoch == sink.last["epoch"]
    assert_same_run(plain, resumed)
