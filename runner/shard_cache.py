"""The runner's local copy of shards, bounded on disk (issue 16, ``runner/shards.py``).

A least-recently-used directory: every shard read touches its file, a new one
evicts the oldest files until it fits, so the files under ``root`` never add up
to more than ``capacity`` bytes (``runner_cache_budget_bytes``). Every shard
set of the runner shares the one directory and so the one budget. Files arrive
verified (sha256 from the set's index) and renamed into place: a crash leaves a
``.part`` file at most, which the next eviction pass removes.

Downloads run one at a time in a background thread, so the streaming loader
can ask for the next shard while the current one trains (``prefetch``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from infra.errors import PermanentError, TransientError
from infra.store import ObjectNotFound, ObjectStore, StoreUnavailable

PART = ".part"


class BudgetTooSmall(PermanentError):
    """The budget cannot hold the files the plan needs at once."""

    def __init__(self, message: str) -> None:
        super().__init__("cache_budget_too_small", message)


class ShardCache:
    """Store objects mirrored under ``root``, never more than ``capacity`` bytes of them."""

    def __init__(self, root: Path, capacity: int, store: ObjectStore) -> None:
        self.root, self.capacity, self.store = Path(root), int(capacity), store
        self.root.mkdir(parents=True, exist_ok=True)
        self.peak = 0
        """Most bytes seen under ``root`` after any addition (what the bench reports)."""
        self.downloads = 0
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[Path]] = {}
        self._reserved: dict[str, int] = {}
        self._pool: ThreadPoolExecutor | None = None

    def local(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def used(self) -> int:
        """Bytes under ``root`` now (``.part`` files included: they are on the disk too)."""
        return sum(size for _, size, _ in self._files())

    def get(self, key: str, sha256: str, size: int) -> Path:
        """The local path of ``key``, downloaded and verified first when it is not here."""
        with self._lock:
            path = self.local(key)
            if path.is_file():
                _touch(path)
                return path
            fut = self._inflight.get(key)
            owner = fut is None
            if fut is None:
                fut = self._inflight[key] = Future()
        if not owner:
            return fut.result()
        try:
            fut.set_result(self._download(key, sha256, size))
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)
        return fut.result()

    def prefetch(self, key: str, sha256: str, size: int) -> None:
        """Start fetching ``key`` in the background (errors surface on the later ``get``)."""
        with self._lock:
            if key in self._inflight or self.local(key).is_file():
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="radtrain-shard-fetch")
        self._pool.submit(self._quiet_get, key, sha256, size)

    def put(self, key: str, array: np.ndarray) -> Path:
        """Write ``array`` as ``key``'s local copy (a shard just built), within the budget."""
        path = self.local(key)
        tmp = path.with_name(path.name + PART)
        with self._lock:
            self._make_room(key, array.nbytes + 4096)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a name
                np.save(fh, array, allow_pickle=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            with self._lock:
                self._reserved.pop(key, None)
                self.peak = max(self.peak, self.used())
        return path

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # --- internals -----------------------------------------------------------
    def _quiet_get(self, key: str, sha256: str, size: int) -> None:
        try:
            self.get(key, sha256, size)
        except Exception:  # the training thread's own get reports it
            return

    def _download(self, key: str, sha256: str, size: int) -> Path:
        path = self.local(key)
        tmp = path.with_name(path.name + PART)
        with self._lock:
            self._make_room(key, size)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.store.get_file(key, tmp)
            except ObjectNotFound as exc:
                raise PermanentError("cache_corrupt", f"shard {key} listed in its index is "
                                     "missing from the store; delete the set's index.json "
                                     "to rebuild it") from exc
            except StoreUnavailable as exc:
                raise TransientError("store_unavailable", f"reading {key}: {exc}") from exc
            digest = _sha256(tmp)
            if digest != sha256:
                raise PermanentError("cache_corrupt", f"shard {key} has sha256 {digest[:12]}, "
                                     f"its index says {sha256[:12]}; delete the set's "
                                     "index.json to rebuild it")
            os.replace(tmp, path)
            self.downloads += 1
            return path
        finally:
            tmp.unlink(missing_ok=True)
            with self._lock:
                self._reserved.pop(key, None)
                self.peak = max(self.peak, self.used())

    def _make_room(self, key: str, size: int) -> None:
        """Evict least recently used files until ``size`` more bytes fit (lock held)."""
        if size > self.capacity:
            raise BudgetTooSmall(f"runner_cache_budget_bytes={self.capacity} cannot hold "
                                 f"{key} ({size} bytes)")
        files = sorted(self._files(), key=lambda f: f[2])
        held = [self.local(k) for k in (*self._inflight, *self._reserved)]
        busy = {*held, *(p.with_name(p.name + PART) for p in held)}
        used = sum(s for _, s, _ in files) + sum(self._reserved.values())
        for path, fsize, _ in files:
            if used + size <= self.capacity:
                break
            if path in busy:
                continue
            path.unlink(missing_ok=True)
            used -= fsize
        if used + size > self.capacity:
            raise BudgetTooSmall(f"runner_cache_budget_bytes={self.capacity}: {used} bytes in "
                                 f"use by shards being read or fetched, no room for {key}")
        self._reserved[key] = size

    def _files(self) -> list[tuple[Path, int, int]]:
        """(path, size, last use in ns) of every file under ``root``."""
        out = []
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                out.append((path, st.st_size, st.st_mtime_ns))
        return out


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except FileNotFoundError:
        pass


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
