"""Decoding a dataset's cases on every core (issue 16): DICOM in, small uint8 arrays out.

Decoding and preprocessing are pure CPU work in Python (pydicom, numpy), so
threads cannot run them side by side; ``DecodePool`` runs them in a process pool
(``runner_decode_workers``; 1: in this process). A worker gets local file paths
(the local store's own files, or copies downloaded by runner/data.py), reads,
windows and resizes them, and sends back only the (C, size, size) uint8 array
the cache keeps, so little crosses the process boundary.

Workers are forked where the platform allows it (Linux): a spawned worker would
import numpy, pydicom and torch again before its first case. This process is the last
of the ``runner_decode_workers``: it decodes a chunk itself whenever the forked ones
have enough queued, instead of waiting on them (a fork, and a worker's start-up
faults, cost as much as some twenty cases). The decode memory budget
(imaging/budget.py) still holds: this process and the workers share one budget, so
the decodes in flight in all of them together stay within the per-process limit the
runner was configured with, and each image within the per-request limit.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing.context import BaseContext
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from imaging.budget import DecodeBudget, DecodeBusy, default_budget, set_default_budget
from imaging.reader import CaseReadError, read_image
from imaging.transforms import preprocess_uint8
from runner.prep_uint8 import lut_uint8, resize_torch
from runner.slices import adjacent_uint8, anatomical
from runner.targets import read_mask
from schemas.spec import Preprocessing


@dataclass(frozen=True)
class Recipe:
    """What a worker needs besides the files: the same for every case of a build."""

    prep: Preprocessing
    masks: bool
    """Segmentation: read each case's mask into the preprocessed frame too."""
    n_classes: int


@dataclass(frozen=True)
class CaseJob:
    index: int
    label: str
    """How errors name the case: ``case_id (middle image key)``."""
    images: tuple[Path, ...]
    mask: Path | None = None
    owned: bool = False
    """The files are temporary copies: deleted once decoded."""


@dataclass(frozen=True)
class Target:
    """The cache file being written (a ``.npy`` of uint8 (N, C, H, W)): the workers write
    each case's pixels into it themselves, so only small results cross back."""

    path: Path
    offset: int
    shape: tuple[int, ...]

    @staticmethod
    def of(array: np.ndarray | None) -> Target | None:
        if isinstance(array, np.memmap) and array.filename is not None:
            return Target(Path(array.filename), int(array.offset), tuple(array.shape))
        return None


@dataclass(frozen=True)
class Decoded:
    index: int
    x: np.ndarray | None = None
    """None once a worker wrote it into the ``Target``."""
    hw: tuple[int, int] | None = None
    """The decoded frame's rows and columns (boxes are scaled from it)."""
    mask: np.ndarray | None = None
    error: str | None = None
    busy_s: float | None = None
    """The decode budget stayed full this long (``DecodeBusy``, re-raised by the caller:
    its constructor does not survive pickling)."""


def decode_case(job: CaseJob, recipe: Recipe, budget: DecodeBudget | None = None) -> Decoded:
    """One case: its pixels as the cache keeps them, its frame size, its mask (``budget``:
    the decode memory budget, this process's default unless given)."""
    prep = recipe.prep
    try:
        imgs = [anatomical(read_image(p, source=job.label, budget=budget), p)
                for p in job.images]
        frame = imgs[len(imgs) // 2].frame()
        hw = (int(frame.shape[0]), int(frame.shape[1]))
        if prep.slices == "adjacent":
            x = adjacent_uint8(imgs, prep, resize=resize_torch)
        else:  # a lookup table where it fits (runner/prep_uint8.py): the same pixels
            image = imgs[len(imgs) // 2]
            table = lut_uint8(image, prep)
            x = preprocess_uint8(image, prep, resize_torch) if table is None else table
        mask = None
        if recipe.masks and job.mask is not None:
            mask = read_mask(job.mask, hw, prep.image_size, recipe.n_classes, job.label)
        return Decoded(job.index, x, hw, mask)
    except CaseReadError as exc:
        return Decoded(job.index, error=exc.message)
    except ValueError as exc:
        return Decoded(job.index, error=CaseReadError(job.label, str(exc)).message)
    finally:
        if job.owned:
            for path in (*job.images, job.mask):
                if path is not None:
                    path.unlink(missing_ok=True)


@dataclass
class _Worker:
    recipe: Recipe | None = None
    target: np.ndarray | None = None


_WORKER = _Worker()


def decode_chunk(jobs: list[CaseJob]) -> list[Decoded]:
    """A worker's task: several cases, so the per-task overhead is paid once for them."""
    assert _WORKER.recipe is not None, "decode_chunk runs in a DecodePool worker"
    out = []
    for job in jobs:
        try:
            done = decode_case(job, _WORKER.recipe)
        except DecodeBusy as exc:
            done = Decoded(job.index, busy_s=exc.wait_s)
        if _WORKER.target is not None and done.x is not None:
            _WORKER.target[done.index] = done.x
            done = replace(done, x=None)
        out.append(done)
    return out


class SharedBudget(DecodeBudget):
    """A ``DecodeBudget`` whose process-wide count lives in shared memory: the decodes
    in flight in every worker of one pool add up against one ``process_bytes``."""

    def __init__(self, request_bytes: int, process_bytes: int, wait_s: float,
                 cond: Any, used: Any) -> None:
        super().__init__(request_bytes, process_bytes, wait_s)
        self._shared_cond, self._shared_used = cond, used

    @property
    def in_use(self) -> int:
        with self._shared_cond:
            return int(self._shared_used.value)

    def _acquire(self, needed: int) -> None:
        deadline = time.monotonic() + self.wait_s
        with self._shared_cond:
            while self._shared_used.value + needed > self.process_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DecodeBusy(self.wait_s)
                self._shared_cond.wait(left)
            self._shared_used.value += needed

    def _release(self, amount: int) -> None:
        if amount:
            with self._shared_cond:
                self._shared_used.value -= amount
                self._shared_cond.notify_all()


def _init_worker(recipe: Recipe, target: Target | None, limits: tuple[int, int, float],
                 cond: Any, used: Any) -> None:
    torch.set_num_threads(1)  # one core per worker; and no OpenMP pool after a fork
    signal.set_wakeup_fd(-1)  # the runner's event loop's, inherited: never write to it
    for sig in (signal.SIGINT, signal.SIGTERM):  # the runner's handlers are not ours
        signal.signal(sig, signal.SIG_DFL)
    _WORKER.recipe = recipe
    if target is not None:
        _WORKER.target = np.memmap(target.path, np.uint8, "r+", target.offset, target.shape)
    set_default_budget(SharedBudget(*limits, cond, used))


def available_cpus() -> int:
    """The cores this process may run on (its affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_workers(setting: int) -> int:
    """``runner_decode_workers``: 0 means one worker per available core."""
    return setting if setting > 0 else available_cpus()


def _context() -> BaseContext:
    if sys.platform.startswith("linux"):
        return mp.get_context("fork")
    return mp.get_context("spawn")


class DecodePool:
    """``submit(jobs) -> Future[list[Decoded]]`` on ``workers`` cores: ``workers - 1``
    forked processes, each kept ``QUEUED`` chunks ahead, and this process, which decodes
    any other chunk at once (all of them when ``workers`` is 1: no pool to start for a
    small build). With a ``target`` the workers write the pixels into it themselves."""

    QUEUED = 2
    """Chunks each forked worker has in hand (one decoding, one waiting): it never idles
    while this process decodes a chunk of its own."""

    def __init__(self, workers: int, recipe: Recipe, target: Target | None = None) -> None:
        self.workers = max(1, workers)
        self.recipe = recipe
        self._pool: ProcessPoolExecutor | None = None
        self._budget: DecodeBudget | None = None
        self._queued: set[Future[list[Decoded]]] = set()
        if self.workers > 1:
            ctx = _context()
            budget = default_budget()
            limits = (budget.request_bytes, budget.process_bytes, budget.wait_s)
            cond, used = ctx.Condition(), ctx.Value("q", 0, lock=False)
            self._budget = SharedBudget(*limits, cond, used)
            self._pool = ProcessPoolExecutor(
                self.workers - 1, mp_context=ctx, initializer=_init_worker,
                initargs=(recipe, target, limits, cond, used))

    def submit(self, jobs: list[CaseJob]) -> Future[list[Decoded]]:
        if self._pool is not None:
            self._queued = {f for f in self._queued if not f.done()}
            if len(self._queued) < self.QUEUED * (self.workers - 1):
                future = self._pool.submit(decode_chunk, jobs)
                self._queued.add(future)
                return future
        done: Future[list[Decoded]] = Future()
        try:
            done.set_result([decode_case(job, self.recipe, self._budget) for job in jobs])
        except BaseException as exc:  # DecodeBusy and the unexpected, raised by result()
            done.set_exception(exc)
        return done

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
