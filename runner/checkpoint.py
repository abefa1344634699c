"""Full training checkpoints in the store, so a crash loses at most one epoch.

Each attempt of a task writes only its own ``runs/<task_id>/attempts/<n>/checkpoints/last.pt``
(beside its artifacts), holding everything a resumed run needs to continue exactly
where that attempt stood: model, optimizer, scheduler, grad scaler, the position
(epoch, and within an epoch the batch order and the next batch on a SIGTERM or
cancel), every RNG state (torch, CUDA, numpy, python and the loop's own
generator), the best metric with its weights, and the early-stopping counter.

Why per attempt: the fence (``guard``, the worker's ``Attempt.owns``) is checked
before each write, and a stale attempt that passed the check just before it was
replaced could still finish its upload. With one shared key that upload could
overwrite the new owner's checkpoint; now it lands in the stale attempt's own
folder. Attempt ``n`` resumes from the newest attempt *older than n* whose
checkpoint is whole and of this spec (:func:`resume_order`), then from the key the
previous version used (``runs/<task_id>/checkpoints/last.pt``, :data:`LEGACY`), so
tasks checkpointed before the change still resume. Once an attempt has written
its first checkpoint, the older attempts' checkpoints beyond the newest
``keep - 1`` are deleted (:func:`prune_order`; setting ``checkpoints_kept``).

Everything is stored as tensors and plain containers, so loading uses
``torch.load(weights_only=True)``: a checkpoint is data, never code. Writes
go through ``ObjectStore.put_file``, atomic in every store (a temporary key then
rename/copy, or one S3 PutObject; listings hide temporary keys), so a listed
checkpoint is a whole one: no marker file is needed to tell a finished write.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch

from infra.store import InvalidKey, ObjectNotFound, ObjectStore, StoreError
from schemas.spec import TrainingSpec

log = logging.getLogger("radtrain.runner.checkpoint")
FORMAT = 1
State = dict[str, Any]
LEGACY = 0
"""The attempt number given to the previous version's one key per task: below every attempt."""
KEEP = 2
"""Default of the ``checkpoints_kept`` setting: this attempt's and one older fallback."""
_ATTEMPT_KEY = re.compile(r"attempts/([1-9][0-9]*)/checkpoints/last\.pt")


def checkpoint_key(task_id: str, attempt: int) -> str:
    """Attempt ``attempt``'s checkpoint (the artifacts' prefix, runner/artifacts.py, plus
    ``checkpoints/last.pt``); :data:`LEGACY` names the key used before attempts had one."""
    if attempt == LEGACY:
        return f"runs/{task_id}/checkpoints/last.pt"
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1 (or LEGACY), got {attempt}")
    return f"runs/{task_id}/attempts/{attempt}/checkpoints/last.pt"


def attempts_in(keys: Iterable[str], task_id: str) -> list[int]:
    """The attempts (:data:`LEGACY` included) whose checkpoint is among ``keys``, newest
    first. Pure: ``keys`` is a store listing of ``runs/<task_id>/``."""
    prefix, found = f"runs/{task_id}/", set()
    for key in keys:
        if key == checkpoint_key(task_id, LEGACY):
            found.add(LEGACY)
        elif key.startswith(prefix) and (m := _ATTEMPT_KEY.fullmatch(key[len(prefix):])):
            found.add(int(m.group(1)))
    return sorted(found, reverse=True)


def resume_order(found: Iterable[int], current: int) -> list[int]:
    """Which checkpoints attempt ``current`` tries, in order: the attempts older than it,
    newest first (the legacy key last). A later attempt's (a stale reader) never."""
    return sorted((n for n in set(found) if n < current), reverse=True)


def prune_order(found: Iterable[int], current: int, keep: int) -> list[int]:
    """Whose checkpoints go once attempt ``current`` has written one: the older attempts'
    beyond the newest ``keep - 1`` (``keep`` counts ``current``'s own). Never a later one."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    return resume_order(found, current)[keep - 1:]


def stored_attempts(store: ObjectStore, task_id: str) -> list[int]:
    """The task's attempts that have a (whole) checkpoint in the store, newest first."""
    return attempts_in(store.list(f"runs/{task_id}/"), task_id)


def newest_key(store: ObjectStore, task_id: str) -> str | None:
    """The newest attempt's checkpoint key, or None: what the next attempt would try first."""
    found = stored_attempts(store, task_id)
    return checkpoint_key(task_id, found[0]) if found else None


def spec_fingerprint(spec: TrainingSpec) -> str:
    """What must not change between attempts for a checkpoint to be reusable.

    Name and description may; the data, classes, model and recipe may not.
    """
    keep = spec.model_dump(mode="json", include={"dataset", "classes", "label_mode",
                                                 "preprocessing", "model", "hyperparameters"})
    return hashlib.sha256(repr(sorted(keep.items())).encode()).hexdigest()


# --- RNG states as tensors --------------------------------------------------------


def rng_state(gen: torch.Generator) -> State:
    """Every random source the loop draws from, in ``weights_only``-loadable form."""
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "gauss": float(np_state[4])},
        "python": {"version": int(py_state[0]),
                   "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
        "loop": gen.get_state(),
    }


def set_rng_state(state: State, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    gen.set_state(state["loop"])


# --- store I/O --------------------------------------------------------------------


class Sink(Protocol):
    """Where the loop saves: a :class:`Checkpointer`, or rank 0's relay to its supervisor
    (``runner.distributed``), which asks the same guard and uploads the same way."""

    saved_epoch: int | None

    def save(self, state: State) -> bool: ...


def stamped(state: State, spec: TrainingSpec) -> State:
    """The state with what :meth:`Checkpointer.load` checks before trusting it."""
    return {**state, "format": FORMAT, "task_id": spec.task_id, "spec": spec_fingerprint(spec)}


class Checkpointer:
    """Writes attempt ``attempt``'s ``last.pt`` (every write asks ``guard`` first) and reads
    the checkpoint that attempt resumes from (:func:`resume_order`)."""

    def __init__(self, store: ObjectStore, spec: TrainingSpec, work_dir: Path,
                 guard: Callable[[], bool] = lambda: True, *, attempt: int = 1,
                 keep: int = KEEP) -> None:
        if keep < 1 or attempt < 1:
            raise ValueError(f"need attempt >= 1 and checkpoints_kept >= 1, got attempt "
                             f"{attempt}, checkpoints_kept {keep}")
        self.store, self.spec, self.work_dir, self.guard = store, spec, work_dir, guard
        self.attempt, self.keep = attempt, keep
        self.key = checkpoint_key(spec.task_id, attempt)
        self.saved_epoch: int | None = None
        """The completed epochs of the last checkpoint this attempt wrote (or resumed)."""
        self.resumed_from: int | None = None
        """The attempt (:data:`LEGACY`: the old shared key) whose checkpoint :meth:`load` read."""
        self._pruned = False

    def save(self, state: State) -> bool:
        """Serialise locally, then an atomic put. False when the guard refused."""
        if not self.guard():
            log.warning("task %s: not writing a checkpoint, a newer attempt owns the task",
                        self.spec.task_id)
            return False
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.work_dir, suffix=".pt", delete=False) as fh:
            tmp = Path(fh.name)
        try:
            torch.save(stamped(state, self.spec), tmp)
            self.store.put_file(self.key, tmp, content_type="application/octet-stream")
        finally:
            tmp.unlink(missing_ok=True)
        self._written(int(state["epoch"]))
        return True

    def put(self, path: Path, epoch: int) -> bool:
        """Upload a checkpoint another process serialised (``stamped``), asking the guard
        first; the file is removed either way. False when the guard refused."""
        try:
            if not self.guard():
                log.warning("task %s: not writing a checkpoint, a newer attempt owns the task",
                            self.spec.task_id)
                return False
            self.store.put_file(self.key, path, content_type="application/octet-stream")
        finally:
            path.unlink(missing_ok=True)
        self._written(epoch)
        return True

    def _written(self, epoch: int) -> None:
        self.saved_epoch = epoch
        if not self._pruned:
            self.prune()

    def prune(self) -> None:
        """Delete the older attempts' checkpoints beyond the newest ``keep - 1``, once this
        attempt has one of its own. A store error is logged and retried at the next write:
        the checkpoint itself is written, only the clean-up waits."""
        task_id = self.spec.task_id
        try:
            for n in prune_order(stored_attempts(self.store, task_id), self.attempt, self.keep):
                self.store.delete(checkpoint_key(task_id, n))
                log.info("task %s: checkpoint of attempt %d deleted (attempt %d has its own; "
                         "checkpoints_kept=%d)", task_id, n, self.attempt, self.keep)
        except StoreError as exc:
            log.warning("task %s: old checkpoints not deleted yet (%r); retried at the next "
                        "checkpoint", task_id, exc)
            return
        self._pruned = True

    def load(self) -> State | None:
        """The newest checkpoint of an older attempt that fits this spec, else None.

        Tried newest first (:func:`resume_order`); one that is gone, unreadable, of
        another spec (a replay with a changed recipe) or in an older format is skipped,
        with a log line, rather than half-applied.
        """
        task_id = self.spec.task_id
        for n in resume_order(stored_attempts(self.store, task_id), self.attempt):
            state = self._read(checkpoint_key(task_id, n))
            if state is not None:
                self.resumed_from = n
                log.info("task %s: attempt %d resumes from %s's checkpoint (epoch %s)",
                         task_id, self.attempt,
                         "the legacy key" if n == LEGACY else f"attempt {n}", state.get("epoch"))
                return state
        return None

    def _read(self, key: str) -> State | None:
        with tempfile.TemporaryDirectory(prefix="radtrain-ckpt-") as tmp:
            path = Path(tmp) / "last.pt"
            try:
                self.store.get_file(key, path)
            except (ObjectNotFound, InvalidKey):
                return None  # deleted since the listing (an older attempt's clean-up)
            try:
                state: State = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                log.warning("task %s: unreadable checkpoint %s ignored: %r",
                            self.spec.task_id, key, exc)
                return None
        if not isinstance(state, dict) or state.get("format") != FORMAT \
                or state.get("spec") != spec_fingerprint(self.spec):
            log.warning("task %s: checkpoint %s of another spec or format ignored",
                        self.spec.task_id, key)
            return None
        return state
