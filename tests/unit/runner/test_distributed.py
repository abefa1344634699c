"""The pure parts of multi-process training: who trains with how many processes, how a
global batch is sharded, how stop reasons travel, what a supervisor uploads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from infra.errors import PermanentError
from infra.store import LocalStore
from runner.checkpoint import Checkpointer, checkpoint_key, stamped
from runner.distributed import world_size
from runner.rank_group import REASONS, Group, ProcessGroup, reason_code
from runner.recipe import batch_plan
from schemas.spec import TrainingSpec
from tests.unit.runner.test_checkpoint_resume import tiny_spec


def spec_with(gpus: int, batch_size: int = 8) -> TrainingSpec:
    spec = tiny_spec(batch_size=batch_size)
    return spec.model_copy(update={"resources": spec.resources.model_copy(
        update={"gpus": gpus})})


@pytest.mark.parametrize("gpus", [0, 1])
def test_one_gpu_or_none_is_one_process(gpus: int) -> None:
    assert world_size(spec_with(gpus), "cpu", 2) == 1
    assert world_size(spec_with(gpus), "cuda", 2) == 1


def test_a_cpu_runner_takes_up_to_its_process_limit() -> None:
    assert world_size(spec_with(2), "cpu", 2) == 2
    assert world_size(spec_with(4), "cpu", 4) == 4
    with pytest.raises(PermanentError, match="at most 2 processes") as exc:
        world_size(spec_with(3), "cpu", 2)
    assert exc.value.code == "resources_unavailable"


def test_a_cuda_runner_needs_the_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(PermanentError, match="has 1 CUDA device") as exc:
        world_size(spec_with(2), "cuda", 8)
    assert exc.value.code == "resources_unavailable"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert world_size(spec_with(8, batch_size=16), "cuda", 1) == 8


def test_every_process_needs_two_samples_per_step() -> None:
    with pytest.raises(PermanentError, match="batch_size 2") as exc:
        world_size(spec_with(2, batch_size=2), "cpu", 2)
    assert exc.value.code == "batch_too_small"


def test_batch_plan_drops_a_last_batch_too_small_to_shard() -> None:
    assert batch_plan(33, 8) == 4 and batch_plan(34, 8) == 5  # one process: as before
    assert batch_plan(34, 8, world=2) == 4 and batch_plan(36, 8, world=2) == 5
    assert batch_plan(32, 8, world=2) == 4


def test_shards_partition_the_global_batch() -> None:
    batch = np.arange(7)
    shards = [ProcessGroup(r, 3, torch.device("cpu")).shard(batch) for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == batch.tolist()
    assert [len(s) for s in shards] == [3, 2, 2]
    assert Group().shard(batch) is batch


def test_stop_reasons_travel_as_codes() -> None:
    for reason in ("cancelled", "shutdown", "fenced", "unverified"):
        assert REASONS[reason_code(reason)] == reason
    assert reason_code(None) == reason_code("") == 0
    assert REASONS[reason_code(True)] == "stopped"


def test_put_asks_the_guard_then_uploads_and_removes_the_file(tmp_path: Path) -> None:
    store, spec = LocalStore(tmp_path / "store"), tiny_spec()
    state = stamped({"epoch": 2, "x": torch.ones(2)}, spec)
    for allowed in (False, True):
        path = tmp_path / f"rank0-{allowed}.pt"
        torch.save(state, path)
        ckpt = Checkpointer(store, spec, tmp_path / "work", (lambda: True) if allowed
                            else (lambda: False))
        assert ckpt.put(path, 2) is allowed and not path.exists()
        assert store.exists(checkpoint_key(spec.task_id, 1)) is allowed
        assert ckpt.saved_epoch == (2 if allowed else None)
    loaded = Checkpointer(store, spec, tmp_path / "work", attempt=2).load()
    assert loaded is not None and loaded["epoch"] == 2  # stamped: this spec's checkpoint
