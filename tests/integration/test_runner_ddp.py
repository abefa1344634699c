"""Training over two gloo processes (runner/distributed.py) against one process, on CPU.

Real synthetic DICOM, a LocalStore, the runner's own ``Checkpointer`` (its guard
standing in for the attempt's fence). The network is timm's tiny
``test_efficientnet_gn`` (GroupNorm, no BatchNorm), so that the comparison is
exact up to float rounding: with the global batch of one process (8) split in two
shards of 4, DDP averages the two shards' gradients, which is the full batch's
gradient; what differs is the order of the float sums (shard sums, then the
all-reduce). Measured here (3 epochs x 4 steps at 32 px): validation loss within
5e-7, weights within 1.3e-5; the tolerance (1e-4 absolute on losses, 2e-4 on
weights, equal accuracy and AUC) leaves room for that rounding on other CPUs and
thread counts and none for a wrong shard, a missing gradient average or a
mis-weighted loss, each of which moves the loss by 1e-2 or more. (With BatchNorm
the statistics of a shard of 4 are not those of a batch of 8, and on CPU there is no
SyncBatchNorm: such a network matches only loosely, so the comparison does not use one;
the end-to-end test in tests/e2e/test_resume.py trains one over two ranks.)

Injected, expected, observed:
- cancel at step 6 (epoch 2) -> both ranks stop within two steps, a checkpoint of
  that exact position, no rank left; resumed over two processes, the run ends as the
  uninterrupted one-process run did (same tolerance);
- the guard refuses the epoch-1 checkpoint (a newer attempt) -> fenced, nothing
  written, both ranks stop;
- kill -9 of rank 1 -> a transient ``rank_failed``, no rank left;
- kill -9 of the launcher (the job's parent) after a checkpoint -> its ranks exit on
  their own; a new launcher resumes from the checkpoint and completes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.device_ddp import World
from infra.errors import TransientError
from runner.checkpoint import checkpoint_key
from runner.train import ProgressUpdate, TrainingStopped, TrainOptions, TrainResult, train
from schemas.spec import TrainingSpec
from tests.integration.test_runner_train import DATASET, make_spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
NETWORK = "test_efficientnet_gn"
EPOCHS = 3
KILL_EPOCHS = 4
TOL = 1e-4
ROOT = Path(__file__).resolve().parents[2]


def ddp_spec(sha: str, task_id: str = "task-ddp", epochs: int = EPOCHS) -> TrainingSpec:
    spec = make_spec(sha, 40, network=NETWORK, entry_id=NETWORK)
    hp = spec.hyperparameters.model_copy(update={"epochs": epochs, "augmentation": "none",
                                                 "image_size": 32})
    prep = spec.preprocessing.model_copy(update={"image_size": 32})
    return spec.model_copy(update={"task_id": task_id, "hyperparameters": hp,
                                   "preprocessing": prep,
                                   "resources": spec.resources.model_copy(update={"gpus": 2})})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("ddp"), "cpu", 2, dataset=DATASET)


@pytest.fixture(scope="module")
def one(world: World) -> TrainResult:
    """The reference: the same spec in one process."""
    spec = ddp_spec(world.sha)
    return train(spec, world.data(spec), torch.device("cpu"), lambda u: None, lambda: False)


def assert_matches(got: TrainResult, ref: TrainResult) -> None:
    assert [h["epoch"] for h in got.history] == [h["epoch"] for h in ref.history]
    for a, b in zip(got.history, ref.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=TOL)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=TOL)
    assert got.best_epoch == ref.best_epoch
    assert got.metrics["val_loss"] == pytest.approx(ref.metrics["val_loss"], abs=TOL)
    assert (got.metrics["accuracy"], got.metrics["auc"]) == (ref.metrics["accuracy"],
                                                            ref.metrics["auc"])
    mine, theirs = got.model.state_dict(), ref.model.state_dict()
    worst = max(float((mine[k].float() - theirs[k].float()).abs().max()) for k in theirs)
    assert worst < 2 * TOL, worst
    print(f"val_loss {got.metrics['val_loss']:.7f} vs {ref.metrics['val_loss']:.7f}; "
          f"largest weight difference {worst:.2e}")


def no_ranks_left() -> bool:
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not multiprocessing.active_children()


def test_two_gloo_processes_match_one_process(world: World, one: TrainResult) -> None:
    spec = ddp_spec(world.sha)
    updates: list[ProgressUpdate] = []
    ckpt = world.ckpt(spec)
    two = world.group(spec, updates.append, lambda: False, TrainOptions(checkpointer=ckpt))
    assert_matches(two, one)
    # rank 0 alone reports: every global step once, then each epoch's metrics
    steps = [u.step for u in updates if not u.epoch_end]
    assert steps == list(range(1, 4 * EPOCHS + 1))
    assert [u.epoch for u in updates if u.epoch_end] == list(range(1, EPOCHS + 1))
    assert all(u.throughput for u in updates if not u.epoch_end)
    # rank 0's checkpoints went through the supervisor's Checkpointer (guard, then upload)
    assert ckpt.saved_epoch == EPOCHS
    assert world.store.exists(checkpoint_key(spec.task_id, 1))
    assert world.ckpt(spec, attempt=2).load() is not None
    assert two.evaluation is not None and two.example is not None and two.strategy is not None
    assert no_ranks_left()


def test_cancel_stops_both_ranks_and_the_resumed_run_ends_as_one_process(
        world: World, one: TrainResult) -> None:
    spec = ddp_spec(world.sha, "task-ddp-cancel")
    updates: list[ProgressUpdate] = []
    asked: list[int] = []

    def should_stop() -> str | None:
        steps = [u.step for u in updates if not u.epoch_end]
        if steps and steps[-1] >= 6 and not asked:
            asked.append(steps[-1])
        return "cancelled" if asked else None

    with pytest.raises(TrainingStopped) as stopped:
        world.group(spec, updates.append, should_stop, TrainOptions(checkpointer=world.ckpt(spec)))
    assert stopped.value.reason == "cancelled" and stopped.value.checkpoint_epoch == 1
    assert no_ranks_left()
    last = max(u.step for u in updates)
    assert last - asked[0] <= 2, (asked, last)  # within one step window of the flag
    state = world.ckpt(spec, attempt=2).load()
    assert state is not None and (state["epoch"], state["step"]) == (1, last)
    assert state["batch_index"] == last - 4  # the exact position inside epoch 2

    resumed = world.group(spec, lambda u: None, lambda: False,
                          TrainOptions(checkpointer=world.ckpt(spec, attempt=2), resume=state))
    assert resumed.resumed_from_epoch == 1
    assert_matches(resumed, one)


def test_a_refused_checkpoint_fences_every_rank(world: World) -> None:
    spec = ddp_spec(world.sha, "task-ddp-fenced")
    refused: list[bool] = []

    def guard() -> bool:  # as Attempt.owns: the ledger names a newer attempt
        refused.append(True)
        return False

    with pytest.raises(TrainingStopped) as stopped:
        world.group(spec, lambda u: None, lambda: "fenced" if refused else None,
                    TrainOptions(checkpointer=world.ckpt(spec, guard)))
    assert stopped.value.reason == "fenced" and refused == [True]
    assert not world.store.list(f"runs/{spec.task_id}/")
    assert no_ranks_left()


def test_a_killed_rank_fails_the_attempt_as_transient(world: World) -> None:
    spec = ddp_spec(world.sha, "task-ddp-rank-dies")
    killed: list[int] = []

    def on_progress(update: ProgressUpdate) -> None:
        if update.step == 2 and not killed:
            rank1 = next(p for p in multiprocessing.active_children()
                         if p.name == "radtrain-rank-1")
            assert rank1.pid is not None
            os.kill(rank1.pid, signal.SIGKILL)
            killed.append(rank1.pid)

    with pytest.raises(TransientError) as failed:
        world.group(spec, on_progress, lambda: False, TrainOptions())
    assert failed.value.code == "rank_failed" and killed
    assert no_ranks_left()


def launcher_main(root: str, sha: str) -> None:
    """The job's parent in its own process (the test kills it): train over two ranks."""
    world = World.opened(Path(root), "cpu", 2, dataset=DATASET)
    spec = ddp_spec(sha, "task-ddp-kill", KILL_EPOCHS)

    def on_progress(update: ProgressUpdate) -> None:
        if update.step == 1:
            pids = [p.pid for p in multiprocessing.active_children()]
            print("ranks", json.dumps(pids), flush=True)
        # A slow relay: rank 0 waits for it at each checkpoint, so an epoch takes >= 2 s
        # here and the test's kill lands long before the last one.
        time.sleep(0.5)

    world.group(spec, on_progress, lambda: False, TrainOptions(checkpointer=world.ckpt(spec)))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_kill_9_of_the_launcher_then_a_new_one_resumes(world: World) -> None:
    code = ("import sys; from tests.integration.test_runner_ddp import launcher_main; "
            "launcher_main(sys.argv[1], sys.argv[2])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(world.root), world.sha], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ranks"), line
        ranks = json.loads(line.split(" ", 1)[1])
        assert len(ranks) == 2
        spec = ddp_spec(world.sha, "task-ddp-kill", KILL_EPOCHS)
        key = checkpoint_key(spec.task_id, 1)
        deadline = time.monotonic() + 200
        while not world.store.exists(key):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 15
    while not all(_gone(p) for p in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(_gone(p) for p in ranks), ranks  # no orphan keeps training
    state = world.ckpt(spec, attempt=2).load()  # as the next attempt does: attempt 1's
    assert state is not None and 1 <= state["epoch"] < KILL_EPOCHS
    done = world.group(spec, lambda u: None, lambda: False,
                       TrainOptions(checkpointer=world.ckpt(spec, attempt=2), resume=state))
    assert done.resumed_from_epoch == state["epoch"]
    assert world.store.exists(checkpoint_key(spec.task_id, 2))  # rank 0 wrote attempt 2's
    assert [h["epoch"] for h in done.history] == list(range(1, KILL_EPOCHS + 1))
    assert no_ranks_left()
    print(f"launcher killed after checkpoint epoch {state['epoch']}; ranks {ranks} exited; "
          f"resumed and completed {KILL_EPOCHS} epochs")
