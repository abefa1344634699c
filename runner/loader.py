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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from runner.data import PreparedData

ON_DEVICE_MAX_BYTES = 2 * 1024**3


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
                         and data.x.nbytes <= ON_DEVICE_MAX_BYTES)
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
                i = torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(self.device)
                yield self._x[i].float().div_(255.0), self._t[i]
            return
        for xb, targets in self._loader(index_lists):
            yield xb.to(self.device, non_blocking=True).float().div_(255.0), targets

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
