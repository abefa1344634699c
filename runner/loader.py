"""Batches from the prepared cache to the device (DESIGN.md §8 data path).

Two paths, one interface (``batches(index_lists)``):

* resident: on CUDA, when the whole uint8 stack fits, it is copied to the
  GPU once and batches are index slices there (no host work per step);
* loader: otherwise a ``DataLoader`` whose items are whole batches (one
  fancy-indexed slice of the memory-mapped cache each), with worker
  processes, pinned memory and non-blocking copies.

The order of batches is decided by the caller (the loop's seeded generator),
never by the loader, so the number of workers cannot change a run, and a
resumed run sees the batches an uninterrupted one would have.

A third path for data over the cache budget (issue 16, runner/shards.py):

* stream: one background thread gathers each batch from its shards (the local
  disk cache fetching the next shard meanwhile) into a short queue; no worker
  processes (each would keep its own view of the bounded disk cache). The loop's
  ``epoch_order`` keeps an epoch's batches on a few shards at a time: shards in
  a seeded random order, the cases of every ``WINDOW`` of them shuffled together.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from runner.data import PreparedData
from runner.shards import WINDOW, ShardSet

ON_DEVICE_MAX_BYTES = 2 * 1024**3
STREAM_AHEAD = 2
"""Batches the streaming thread prepares ahead of the training step."""


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor (indices, augmentation draws) onto ``device`` without waiting.

    A plain copy from pageable memory to a GPU waits for every kernel queued before
    it: a few per training step left the GPU idle while the next step was launched
    (measured on an H200, ResNet-50 compiled: 0.89x of the synthetic bound). From
    pinned memory the copy is queued like a kernel; the caching host allocator keeps
    the pinned buffer until the copy has run.
    """
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def epoch_order(data: PreparedData, gen: torch.Generator) -> torch.Tensor:
    """One epoch's train cases in order, drawn from the loop's generator only.

    In memory: a plain permutation (the draws every earlier run made). Streaming: shard
    by shard, so an epoch reads each shard once instead of a random case from any.
    """
    train_idx = torch.from_numpy(data.indices("train"))
    if data.shards is None:
        return train_idx[torch.randperm(len(train_idx), generator=gen)]
    cases = train_idx.numpy()
    return torch.from_numpy(windowed_order(cases, data.shards.shard_of(cases), gen, WINDOW))


def windowed_order(cases: np.ndarray, shard_ids: np.ndarray, gen: torch.Generator,
                   window: int) -> np.ndarray:
    """Shards in a random order; the cases of each ``window`` consecutive shards shuffled."""
    uniq = np.unique(shard_ids)
    perm = uniq[torch.randperm(len(uniq), generator=gen).numpy()]
    parts = []
    for w in range(0, len(perm), window):
        members = cases[np.isin(shard_ids, perm[w:w + window])]
        parts.append(members[torch.randperm(len(members), generator=gen).numpy()])
    return np.concatenate(parts) if parts else cases[:0].copy()


def batch_targets(data: PreparedData, idx: np.ndarray) -> Any:
    """The targets of the cases ``idx``, as CPU tensors (a list for ragged boxes)."""
    if data.label_mode == "boxes":
        assert data.boxes is not None
        return [torch.from_numpy(np.array(data.boxes[i], dtype=np.float32)) for i in idx]
    if data.label_mode == "masks":
        assert data.masks is not None
        return torch.from_numpy(np.ascontiguousarray(data.masks[idx]))
    return torch.from_numpy(np.ascontiguousarray(data.y[idx]))


class _BatchDataset(Dataset[tuple[torch.Tensor, Any]]):
    """Item = a whole batch: one slice of the mapped cache instead of B small reads."""

    def __init__(self, data: PreparedData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data.case_ids)

    def __getitem__(self, idx: Any) -> tuple[torch.Tensor, Any]:
        idx = np.asarray(idx, dtype=np.int64)
        x = torch.from_numpy(np.ascontiguousarray(self.data.x[idx]))
        return x, batch_targets(self.data, idx)


class _Plan(Sampler[np.ndarray]):
    """The current pass's index arrays; replaced before each pass, so one loader (and its
    worker processes) serves every epoch instead of forking workers per pass."""

    def __init__(self) -> None:
        self.items: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class BatchSource:
    """uint8 batches in, float [0, 1] batches on the device out, plus their targets."""

    def __init__(self, data: PreparedData, device: torch.device, workers: int = 0) -> None:
        self.data, self.device, self.workers = data, device, workers
        self.resident = (device.type == "cuda" and data.label_mode != "boxes"
                         and data.shards is None and data.x.nbytes <= ON_DEVICE_MAX_BYTES)
        self._plan = _Plan()
        self._loader_: DataLoader[Any] | None = None
        self._x: torch.Tensor | None = None
        self._t: torch.Tensor | None = None
        if self.resident:
            self._x = torch.from_numpy(np.asarray(data.x)).to(device)
            target = data.masks if data.label_mode == "masks" else data.y
            self._t = torch.from_numpy(np.asarray(target)).to(device)

    def batches(self, index_lists: Sequence[np.ndarray]) -> Iterator[tuple[torch.Tensor, Any]]:
        """Yield ``(x, targets)`` for each index array, in the given order."""
        if self.resident:
            assert self._x is not None and self._t is not None
            for idx in index_lists:
                i = to_device(torch.from_numpy(np.asarray(idx, dtype=np.int64)), self.device)
                yield self._x[i].float().div_(255.0), self._t[i]
            return
        if self.data.shards is not None:
            pin = self.device.type == "cuda"
            for xb, targets in _stream(self.data, self.data.shards, index_lists, pin):
                yield self._unit(xb), targets
            return
        for xb, targets in self._loader(index_lists):
            yield self._unit(xb), targets

    def _unit(self, xb: torch.Tensor) -> torch.Tensor:
        """A uint8 batch as float32 [0, 1] on the device. On the CPU numpy divides, in one
        pass on this thread: torch's ``float().div_()`` makes two passes over the batch, on
        its intra-op threads, whose spinning cost more CPU than the division on a loaded
        machine (issue 16). Both are IEEE float32 divisions: the values are identical."""
        if self.device.type == "cpu":
            return torch.from_numpy(np.divide(xb.numpy(), np.float32(255.0), dtype=np.float32))
        return xb.to(self.device, non_blocking=True).float().div_(255.0)

    def _loader(self, index_lists: Sequence[np.ndarray]) -> DataLoader[Any]:
        """One loader for the whole run: with workers, they persist between passes.

        Its own generator keeps the global RNG untouched (the loop's RNG state, and
        so a resumed run, must not depend on how many loaders were created).
        """
        self._plan.items = [np.asarray(i, dtype=np.int64) for i in index_lists]
        if self._loader_ is None:
            self._loader_ = DataLoader(
                _BatchDataset(self.data),
                batch_size=None,
                sampler=self._plan,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                prefetch_factor=2 if self.workers else None,
                persistent_workers=self.workers > 0,
                generator=torch.Generator(),
            )
        return self._loader_


_END = object()


def _stream(data: PreparedData, shards: ShardSet, index_lists: Sequence[np.ndarray],
            pin: bool = False) -> Iterator[tuple[torch.Tensor, Any]]:
    """Batches gathered in a background thread, in order (pinned for a non-blocking copy
    to CUDA); stopping early (cancellation, an error in the step) stops the thread
    before this returns."""
    lists = [np.asarray(i, dtype=np.int64) for i in index_lists]
    out: queue.Queue[Any] = queue.Queue(maxsize=STREAM_AHEAD)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            seq = _first_uses(shards, lists)
            for idx, ahead in zip(lists, seq, strict=True):
                for s in ahead:
                    shards.prefetch(s)
                x = torch.from_numpy(shards.gather(idx, "x"))
                item = (x.pin_memory() if pin else x, batch_targets(data, idx))
                if not offer(item):
                    return
            offer(_END)
        except BaseException as exc:  # re-raised in the training thread
            offer(exc)

    thread = threading.Thread(target=produce, name="radtrain-shard-stream", daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _first_uses(shards: ShardSet, lists: list[np.ndarray]) -> list[list[int]]:
    """For each batch, the shards to fetch ahead: the next ``WINDOW`` the plan will open
    (a window's worth, so a new window's first batch finds its shards fetched; the cache
    holds two windows and more: runner/shards.py SHARDS_IN_BUDGET)."""
    firsts: list[int] = []
    seen: set[int] = set()
    at: list[int] = []
    for idx in lists:
        for s in np.unique(shards.shard_of(idx)).tolist() if len(idx) else []:
            if s not in seen:
                seen.add(s)
                firsts.append(s)
        at.append(len(firsts))
    return [firsts[n:n + WINDOW] for n in at]
