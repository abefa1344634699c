"""Resume = uninterrupted: a run stopped and resumed from its checkpoint ends where an
uninterrupted run with the same seed ends (deterministic CPU, tolerance RESUME_ATOL).

The checkpoints go through a real LocalStore and ``torch.load(weights_only=True)``,
so this also proves that everything in them (RNG states included) is plain data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from infra.errors import PermanentError
from infra.store import LocalStore
from runner.checkpoint import Checkpointer, checkpoint_key
from runner.data import PreparedData
from runner.model import build_model
from runner.recipe import load_optimizer_state
from runner.train import TrainingStopped, TrainOptions, TrainResult, train
from schemas.spec import TrainingSpec

RESUME_ATOL = 1e-6
"""Final metrics of a resumed run may differ from the uninterrupted run's by at most this."""
CPU = torch.device("cpu")


def tiny_data(tmp_path: Path) -> PreparedData:
    """24 cases at 32 px whose label is a bright square: learnable in a few steps."""
    rng = np.random.default_rng(0)
    y = np.array([i % 2 for i in range(24)], dtype=np.int64)
    x = rng.integers(0, 80, (24, 3, 32, 32), dtype=np.uint8)
    x[y == 1, :, 8:20, 8:20] = 230
    split = np.array(["train"] * 16 + ["val"] * 8)
    return PreparedData(x=x, y=y, case_ids=[f"c{i}" for i in range(24)], patient_ids=[None] * 24,
                        split=split, classes=["normal", "finding"], label_mode="single_label",
                        cache_path=tmp_path / "none", cache_hit=False)


def tiny_spec(**hp: Any) -> TrainingSpec:
    return TrainingSpec.model_validate({
        "task_id": "resume-1", "tenant": "default", "name": "resume", "flow": "general",
        "task_type": "classification",
        "dataset": {"dataset_id": "ds", "manifest_key": "datasets/ds/manifest.json",
                    "sha256": "0" * 64, "annotation_type": "single_label", "modality": "CT",
                    "num_cases": 24},
        "classes": ["normal", "finding"], "label_mode": "single_label",
        "preprocessing": {"image_size": 32, "channels": 3, "mean": [0.5], "std": [0.5]},
        "model": {"entry_id": "resnet10t", "builder": "timm", "network": "resnet10t",
                  "pretrained": False, "num_classes": 2, "in_chans": 3},
        "hyperparameters": {"epochs": 3, "batch_size": 8, "image_size": 32, "seed": 7,
                            "learning_rate": 3e-3, "warmup_epochs": 1,
                            "augmentation": "strong", **hp},
        "resources": {"gpus": 0},
    })


def run(spec: TrainingSpec, data: PreparedData, ckpt: Checkpointer | None,
        stop_at_step: int | None = None, resume: dict[str, Any] | None = None) -> TrainResult:
    steps: list[int] = []

    def should_stop() -> str | None:
        return "shutdown" if stop_at_step is not None and len(steps) >= stop_at_step else None

    return train(spec, data, CPU, lambda u: steps.append(u.step) if not u.epoch_end else None,
                 should_stop, options=TrainOptions(checkpointer=ckpt, resume=resume))


def assert_same_run(a: TrainResult, b: TrainResult) -> None:
    assert a.best_epoch == b.best_epoch
    assert a.metrics.keys() == b.metrics.keys()
    for key in a.metrics:
        assert abs(a.metrics[key] - b.metrics[key]) <= RESUME_ATOL, key
    assert len(a.history) == len(b.history)
    for ra, rb in zip(a.history, b.history, strict=True):
        assert abs(ra["train_loss"] - rb["train_loss"]) <= RESUME_ATOL
        assert abs(ra["val_loss"] - rb["val_loss"]) <= RESUME_ATOL
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(),
                                  strict=True):
        assert ka == kb
        torch.testing.assert_close(va, vb, atol=RESUME_ATOL, rtol=0)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    tmp = tmp_path_factory.mktemp("plain")
    return run(tiny_spec(), tiny_data(tmp), None)


def test_sigterm_mid_epoch_checkpoint_resumes_exactly(uninterrupted: TrainResult,
                                                       tmp_path: Path) -> None:
    store, spec, data = LocalStore(tmp_path / "store"), tiny_spec(), tiny_data(tmp_path)
    ckpt = Checkpointer(store, spec, tmp_path / "work")
    with pytest.raises(TrainingStopped) as stopped:
        run(spec, data, ckpt, stop_at_step=5)  # 2 steps per epoch: 1 into epoch 3
    assert stopped.value.reason == "shutdown" and stopped.value.checkpoint_epoch == 2
    assert store.exists(checkpoint_key(spec.task_id, 1))
    state = Checkpointer(store, spec, tmp_path / "work", attempt=2).load()
    assert state is not None and state["epoch"] == 2 and state["batch_index"] == 1
    assert state["step"] == 5 and [h["epoch"] for h in state["history"]] == [1, 2]
    resumed = run(spec, data, Checkpointer(store, spec, tmp_path / "work", attempt=2),
                  resume=state)
    assert resumed.resumed_from_epoch == 2
    assert_same_run(uninterrupted, resumed)


def test_crash_after_an_epoch_resumes_from_its_checkpoint(uninterrupted: TrainResult,
                                                          tmp_path: Path) -> None:
    """kill -9 after epoch 1: only the epoch-end checkpoint exists (later writes refused)."""
    store, spec, data = LocalStore(tmp_path / "store"), tiny_spec(), tiny_data(tmp_path)
    writes: list[int] = []

    def first_only() -> bool:
        writes.append(1)
        return len(writes) == 1

    run(spec, data, Checkpointer(store, spec, tmp_path / "w1", first_only))
    state = Checkpointer(store, spec, tmp_path / "w2", attempt=2).load()
    assert state is not None and state["epoch"] == 1 and state["order"] is None
    resumed = run(spec, data, Checkpointer(store, spec, tmp_path / "w2", attempt=2),
                  resume=state)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]  # nothing repeated, nothing lost
    assert_same_run(uninterrupted, resumed)


def test_checkpoint_holds_every_piece_of_state(tmp_path: Path) -> None:
    store, spec, data = LocalStore(tmp_path / "store"), tiny_spec(epochs=1), tiny_data(tmp_path)
    run(spec, data, Checkpointer(store, spec, tmp_path / "w"))
    state = Checkpointer(store, spec, tmp_path / "w", attempt=2).load()
    assert state is not None
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "rng", "best",
            "bad_epochs", "history"} <= set(state)
    assert {"torch", "cuda", "numpy", "python", "loop"} <= set(state["rng"])
    assert state["best"]["epoch"] == 1 and "auc" in state["best"]["metrics"]


def test_checkpoint_of_another_recipe_is_ignored(tmp_path: Path) -> None:
    store, spec, data = LocalStore(tmp_path / "store"), tiny_spec(epochs=1), tiny_data(tmp_path)
    run(spec, data, Checkpointer(store, spec, tmp_path / "w"))
    other = tiny_spec(epochs=1, learning_rate=1e-2)
    assert Checkpointer(store, other, tmp_path / "w", attempt=2).load() is None
    store.put_bytes(checkpoint_key(spec.task_id, 1), b"not a checkpoint")
    assert Checkpointer(store, spec, tmp_path / "w", attempt=2).load() is None


def test_a_refused_guard_writes_nothing(tmp_path: Path) -> None:
    store, spec, data = LocalStore(tmp_path / "store"), tiny_spec(epochs=1), tiny_data(tmp_path)
    run(spec, data, Checkpointer(store, spec, tmp_path / "w", lambda: False))
    assert not store.list(f"runs/{spec.task_id}/")


def _run_counted(spec: TrainingSpec, data: PreparedData, ckpt: Checkpointer | None,
                 late: bool, stop_at_call: int | None = None,
                 resume: dict[str, Any] | None = None) -> tuple[TrainResult, list[tuple]]:
    """Stopped at the n-th ``should_stop`` call (a position, whatever was reported)."""
    calls: list[int] = []
    updates: list[tuple] = []

    def should_stop() -> str | None:
        calls.append(1)
        return "shutdown" if stop_at_call is not None and len(calls) >= stop_at_call else None

    def on_progress(u: Any) -> None:
        if not u.epoch_end:
            updates.append((u.epoch, u.step, u.total_steps, u.loss))

    result = train(spec, data, CPU, on_progress, should_stop,
                   options=TrainOptions(checkpointer=ckpt, resume=resume, read_loss_late=late))
    return result, updates


def test_reading_each_loss_a_step_late_changes_no_figure_and_no_checkpoint(
        tmp_path: Path) -> None:
    """What CUDA runs do (runner.train ``read_loss_late``), on the CPU: the same updates
    in the same order, a checkpoint taken mid-epoch whose sums hold the step just
    trained (settled before the stop), and the same end once resumed from it."""
    spec, data = tiny_spec(epochs=2), tiny_data(tmp_path)
    now, now_updates = _run_counted(spec, data, None, late=False)
    late, late_updates = _run_counted(spec, data, None, late=True)
    assert late_updates == now_updates and len(now_updates) == 4
    untimed = [[{k: v for k, v in h.items() if k != "seconds"} for h in r.history]
               for r in (now, late)]
    assert untimed[0] == untimed[1]

    store = LocalStore(tmp_path / "store")
    with pytest.raises(TrainingStopped):
        _run_counted(spec, data, Checkpointer(store, spec, tmp_path / "w"), late=True,
                     stop_at_call=4)  # one step into epoch 2
    state = Checkpointer(store, spec, tmp_path / "w", attempt=2).load()
    assert state is not None
    fields = ("epoch", "step", "batch_index", "seen")
    assert [state[k] for k in fields] == [1, 3, 1, 8]
    step_3_loss = now_updates[2][3]
    assert state["loss_sum"] == pytest.approx(step_3_loss * 8, rel=1e-12)
    resumed, _ = _run_counted(spec, data, None, late=True, resume=state)
    assert_same_run(now, resumed)


def train_from_nan_weights(tmp_path: Path, late: bool) -> tuple[PermanentError, list[Any]]:
    """The tiny run from weights one of which is NaN: its error and what it reported."""
    spec, data = tiny_spec(), tiny_data(tmp_path)
    weights = build_model(spec.model).state_dict()
    first = next(k for k, v in weights.items() if v.is_floating_point() and k.endswith("weight"))
    weights[first].fill_(float("nan"))
    reported: list[Any] = []
    with pytest.raises(PermanentError) as failed:
        train(spec, data, CPU, reported.append, lambda: False,
              options=TrainOptions(initial_weights=weights, read_loss_late=late))
    return failed.value, reported


@pytest.mark.parametrize("late", [False, True])
def test_a_diverged_run_fails_at_its_first_bad_step_naming_it(tmp_path: Path, late: bool) -> None:
    """A NaN loss poisons every later step: the run fails at once (permanent, the step
    named, what to change said) instead of training to the end on NaN weights."""
    failed, reported = train_from_nan_weights(tmp_path, late)
    assert failed.code == "training_diverged"
    assert "loss is nan at step 1 (epoch 1)" in failed.message
    assert "learning_rate" in failed.message and reported == []


def test_fp16_skips_a_few_non_finite_steps_and_fails_an_epoch_of_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a grad scaler (fp16, a GPU without bf16) a non-finite loss is an overflow the
    scaler skips: reported without a loss, left out of the sums. An epoch with no finite
    step at all fails the run."""
    import runner.train as loop

    scaled = (None, torch.amp.GradScaler("cpu", enabled=True))
    monkeypatch.setattr(loop, "precision", lambda device, hp: scaled)
    failed, reported = train_from_nan_weights(tmp_path, False)
    assert failed.code == "training_diverged"
    assert "no step of epoch 1 had a finite training loss" in failed.message
    assert [(u.step, u.loss) for u in reported] == [(1, None), (2, None)]


def test_a_checkpoint_resumes_with_the_kernels_of_the_optimizer_it_is_loaded_into() -> None:
    """``fused`` is this optimizer's (fused on CUDA), not the writer's; the state moves."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    writer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # as on a CPU: unfused
    for _ in range(3):
        model(torch.randn(8, 4)).sum().backward()
        writer.step()
    saved = writer.state_dict()
    reader = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)  # as on a GPU
    load_optimizer_state(reader, saved)
    assert reader.param_groups[0]["fused"] is True
    p = next(iter(model.parameters()))
    assert float(reader.state[p]["step"]) == 3.0
    assert torch.equal(reader.state[p]["exp_avg"], writer.state[p]["exp_avg"])
    model(torch.randn(8, 4)).sum().backward()
    reader.step()  # runs on the fused kernel with the carried state
    assert float(reader.state[p]["step"]) == 4.0
    back = torch.optim.AdamW(model.parameters(), lr=1e-2)
    load_optimizer_state(back, reader.state_dict())
    assert back.param_groups[0]["fused"] is None
