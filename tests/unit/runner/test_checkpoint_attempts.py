"""Attempt-scoped checkpoints (runner/checkpoint.py): each attempt writes only its own
``runs/<id>/attempts/<n>/checkpoints/last.pt``; attempt n resumes from the newest older
attempt whose checkpoint is whole and of this spec, then from the previous version's
``runs/<id>/checkpoints/last.pt``; older attempts' checkpoints beyond ``keep`` go once
an attempt has written its first.

Key choice and selection are pure functions over a listing; the rest runs on a real
LocalStore and, for the fence, the in-memory KV of tests/support/fake_kv.py with the
runner's own ``Attempt.owns``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from infra.settings import Settings
from infra.store import LocalStore
from runner.checkpoint import (
    KEEP,
    LEGACY,
    Checkpointer,
    attempts_in,
    checkpoint_key,
    newest_key,
    prune_order,
    resume_order,
    stamped,
    stored_attempts,
)
from runner.ownership import claim
from schemas.spec import TrainingSpec
from tests.unit.runner.test_checkpoint_resume import tiny_spec
from tests.unit.runner.test_ownership import TASK, attempt_of, runs_repo, who

SPEC = tiny_spec()
ID = SPEC.task_id


def ckpt(store: LocalStore, tmp_path: Path, attempt: int, keep: int = KEEP,
         spec: TrainingSpec = SPEC) -> Checkpointer:
    return Checkpointer(store, spec, tmp_path / "work", attempt=attempt, keep=keep)


def epoch_at(store: LocalStore, key: str) -> int:
    return int(torch.load(store.root / key, map_location="cpu", weights_only=True)["epoch"])


# --- pure: keys and selection -------------------------------------------------------------


def test_keys_before_and_after() -> None:
    assert checkpoint_key("t1", LEGACY) == "runs/t1/checkpoints/last.pt"
    assert checkpoint_key("t1", 3) == "runs/t1/attempts/3/checkpoints/last.pt"
    with pytest.raises(ValueError):
        checkpoint_key("t1", -1)


def test_attempts_in_a_listing_only_counts_checkpoint_keys_of_this_task() -> None:
    keys = ["runs/t1/spec.json", "runs/t1/checkpoints/last.pt",
            "runs/t1/attempts/2/checkpoints/last.pt", "runs/t1/attempts/2/model.onnx",
            "runs/t1/attempts/10/checkpoints/last.pt", "runs/t1/attempts/3/metrics.json",
            "runs/t1/attempts/0/checkpoints/last.pt", "runs/t1/attempts/x/checkpoints/last.pt",
            "runs/t1/attempts/4/checkpoints/last.pt.bak", "runs/t12/attempts/5/checkpoints/last.pt",
            "runs/t1/attempts/6/sub/checkpoints/last.pt"]
    assert attempts_in(keys, "t1") == [10, 2, LEGACY]


def test_resume_order_is_older_attempts_newest_first_then_the_legacy_key() -> None:
    found = [LEGACY, 1, 2, 4, 5, 7]
    assert resume_order(found, 5) == [4, 2, 1, LEGACY]  # never its own, never a later one
    assert resume_order(found, 1) == [LEGACY]
    assert resume_order([], 3) == []


@pytest.mark.parametrize(("keep", "gone"), [(1, [3, 1, LEGACY]), (2, [1, LEGACY]),
                                            (3, [LEGACY]), (4, []), (9, [])])
def test_prune_order_keeps_the_newest_older_attempts(keep: int, gone: list[int]) -> None:
    assert prune_order([LEGACY, 1, 3, 4, 6], 4, keep) == gone  # 6: a later attempt, kept


def test_keep_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        prune_order([1], 2, 0)
    with pytest.raises(ValueError, match="checkpoints_kept"):
        ckpt(LocalStore(tmp_path), tmp_path, 2, keep=0)
    assert Settings().checkpoints_kept == KEEP  # the setting's default is the constant


# --- on a store ---------------------------------------------------------------------------


def test_each_attempt_writes_its_own_key_and_the_next_resumes_from_the_newest(
        tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    assert ckpt(store, tmp_path, 1).save({"epoch": 1})
    assert ckpt(store, tmp_path, 2).save({"epoch": 2})
    assert store.exists(checkpoint_key(ID, 1)) and store.exists(checkpoint_key(ID, 2))
    assert not store.exists(checkpoint_key(ID, LEGACY))
    third = ckpt(store, tmp_path, 3)
    state = third.load()
    assert state is not None and state["epoch"] == 2 and third.resumed_from == 2
    assert newest_key(store, ID) == checkpoint_key(ID, 2)
    second = ckpt(store, tmp_path, 2)  # attempt 2 never reads its own (or a later) one
    state = second.load()
    assert state is not None and state["epoch"] == 1 and second.resumed_from == 1
    assert ckpt(store, tmp_path, 1).load() is None


def test_a_task_checkpointed_by_the_previous_version_still_resumes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes(checkpoint_key(ID, LEGACY), _serialised(tmp_path, {"epoch": 4}))
    first = ckpt(store, tmp_path, 1)
    state = first.load()
    assert state is not None and state["epoch"] == 4 and first.resumed_from == LEGACY
    assert first.save({"epoch": 5})  # lands under the attempt; the next one resumes from it
    state = ckpt(store, tmp_path, 2).load()
    assert state is not None and state["epoch"] == 5


def test_an_invalid_newer_checkpoint_falls_back_to_an_older_valid_one(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    assert ckpt(store, tmp_path, 1).save({"epoch": 1})
    other = tiny_spec(learning_rate=1e-2)  # a replay with a changed recipe
    assert ckpt(store, tmp_path, 2, spec=other).save({"epoch": 2})
    store.put_bytes(checkpoint_key(ID, 3), b"not a checkpoint")
    fourth = ckpt(store, tmp_path, 4)
    state = fourth.load()
    assert state is not None and state["epoch"] == 1 and fourth.resumed_from == 1


def test_older_checkpoints_are_pruned_after_the_first_write_only(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes(checkpoint_key(ID, LEGACY), _serialised(tmp_path, {"epoch": 1}))
    for n in (1, 2, 3):
        store.put_bytes(checkpoint_key(ID, n), _serialised(tmp_path, {"epoch": n + 1}))
    refused = Checkpointer(store, SPEC, tmp_path / "w", lambda: False, attempt=4, keep=2)
    assert refused.load() is not None and refused.save({"epoch": 5}) is False
    assert stored_attempts(store, ID) == [3, 2, 1, LEGACY]  # nothing written: nothing deleted
    fourth = ckpt(store, tmp_path, 4, keep=2)
    assert fourth.save({"epoch": 5})
    assert stored_attempts(store, ID) == [4, 3]  # its own and the newest older one
    store.put_bytes(checkpoint_key(ID, 1), _serialised(tmp_path, {"epoch": 2}))
    assert fourth.save({"epoch": 6})  # pruned once per attempt, not at every write
    assert stored_attempts(store, ID) == [4, 3, 1]
    assert ckpt(store, tmp_path, 5, keep=1).save({"epoch": 7})
    assert stored_attempts(store, ID) == [5]
    assert store.exists(f"runs/{ID}/attempts/5/checkpoints/last.pt")


def _serialised(tmp_path: Path, state: dict[str, int]) -> bytes:
    path = tmp_path / "one.pt"
    torch.save(stamped(state, SPEC), path)
    return path.read_bytes()


# --- the check-then-write window ------------------------------------------------------------


async def test_a_stale_attempts_late_write_does_not_change_what_the_owner_resumes_from(
        tmp_path: Path) -> None:
    """Attempt 1 passes its fence check; before its upload lands, attempt 2 claims the task,
    resumes and writes its own checkpoint. The late upload only lands in attempt 1's folder:
    attempt 2's checkpoint, and what the next attempt resumes from, are unchanged."""
    runs, loop = runs_repo(), asyncio.get_running_loop()
    await claim(runs, who())
    stale, owner = attempt_of(tmp_path, runs, 1), attempt_of(tmp_path, runs, 2)
    store = LocalStore(tmp_path / "store")
    spec = stale.ready.data
    assert spec.task_id == TASK
    mine = Checkpointer(store, spec, tmp_path / "w2", owner.owns, attempt=2)
    seen: list[int] = []

    def window() -> bool:  # attempt 1's guard: the check passes, then it is replaced
        ok = stale.owns()
        if ok and len(seen) == 1:
            asyncio.run_coroutine_threadsafe(claim(runs, who()), loop).result(timeout=10)
            resumed = mine.load()
            assert resumed is not None and resumed["epoch"] == 1  # attempt 1's epoch 1
            assert mine.save({**resumed, "epoch": 2})
        seen.append(1)
        return ok

    late = Checkpointer(store, spec, tmp_path / "w1", window, attempt=1)
    assert await asyncio.to_thread(late.save, {"epoch": 1})  # the owner then, written
    assert await asyncio.to_thread(late.save, {"epoch": 9})  # checked, then replaced: lands
    assert epoch_at(store, checkpoint_key(TASK, 1)) == 9  # in its own folder only
    assert epoch_at(store, checkpoint_key(TASK, 2)) == 2  # the owner's is untouched
    nxt = Checkpointer(store, spec, tmp_path / "w3", attempt=3).load()
    assert nxt is not None and nxt["epoch"] == 2  # the owner's, not the stale epoch 9
    assert await asyncio.to_thread(late.save, {"epoch": 10}) is False  # now fenced
    assert stale.should_stop() == "fenced"
    assert epoch_at(store, checkpoint_key(TASK, 2)) == 2
