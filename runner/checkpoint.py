"""Full training checkpoints in the store, so a crash loses at most one epoch.

``runs/<task_id>/checkpoints/last.pt`` holds everything a resumed run needs
to continue exactly where the last one stood: model, optimizer, scheduler,
grad scaler, the position (epoch, and within an epoch the batch order and
the next batch on a SIGTERM or cancel), every RNG state (torch, CUDA, numpy,
python and the loop's own generator), the best metric with its weights, and
the early-stopping counter.

Everything is stored as tensors and plain containers, so loading uses
``torch.load(weights_only=True)``: a checkpoint is data, never code. Writes
go through ``ObjectStore.put_file`` (temporary key, then rename/copy), so a
reader sees a whole checkpoint or the previous one, and a ``guard`` (the
worker's fence) keeps a superseded attempt from overwriting a newer one.
"""

from __future__ import annotations

import hashlib
import logging
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch

from infra.store import InvalidKey, ObjectNotFound, ObjectStore
from schemas.spec import TrainingSpec

log = logging.getLogger("radtrain.runner.checkpoint")
FORMAT = 1
State = dict[str, Any]


def checkpoint_key(task_id: str) -> str:
    return f"runs/{task_id}/checkpoints/last.pt"


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
    """Writes and reads one task's ``last.pt``; every write asks ``guard`` first."""

    def __init__(self, store: ObjectStore, spec: TrainingSpec, work_dir: Path,
                 guard: Callable[[], bool] = lambda: True) -> None:
        self.store, self.spec, self.work_dir, self.guard = store, spec, work_dir, guard
        self.key = checkpoint_key(spec.task_id)
        self.saved_epoch: int | None = None
        """The completed epochs of the last checkpoint this attempt wrote."""

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
        self.saved_epoch = int(state["epoch"])
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
        self.saved_epoch = epoch
        return True

    def load(self) -> State | None:
        """The task's checkpoint if there is one that fits this spec, else None.

        A checkpoint of another spec (a replay with a changed recipe) or in an
        older format is ignored, with a log line, rather than half-applied.
        """
        with tempfile.TemporaryDirectory(prefix="radtrain-ckpt-") as tmp:
            path = Path(tmp) / "last.pt"
            try:
                self.store.get_file(self.key, path)
            except (ObjectNotFound, InvalidKey):
                return None
            try:
                state: State = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                log.warning("task %s: unreadable checkpoint ignored: %r", self.spec.task_id, exc)
                return None
        if state.get("format") != FORMAT or state.get("spec") != spec_fingerprint(self.spec):
            log.warning("task %s: checkpoint of another spec or format ignored",
                        self.spec.task_id)
            return None
        return state
