"""Preparing the training arrays (DESIGN.md §6, §8).

Decoding (``imaging.reader``) happens once per (manifest,
preprocessing, targets); the result is cached on local disk as plain ``.npy``
files, so a retry, a resume or a second task on the same data starts training
at once, and the training loop memory-maps the cache instead of holding a
second copy (DataLoader workers share the mapped pages).

The first build decodes on every core (runner/decode_pool.py, ``runner_decode_workers``),
reads a local store's files where they lie (runner/case_files.py), and writes the pixels
once, straight into the cache file being built (issue 16).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imaging.budget import DecodeBusy
from imaging.reader import MAX_IMAGE_BYTES, CaseReadError, read_image
from infra.store import LocalStore, ObjectStore
from runner import case_files
from runner.case_files import label_of, located
from runner.decode_pool import Decoded, DecodePool, Recipe, Target, resolve_workers
from runner.slices import neighbour_keys
from runner.split import DatasetError, assign_splits, encode_labels
from runner.targets import (
    pack_boxes,
    presence_from_boxes,
    presence_from_masks,
    scale_boxes,
    unpack_boxes,
)
from schemas.dataset import Case, DatasetManifest, SeriesInfo
from schemas.spec import TrainingSpec

CACHE_VERSION = 3
CHUNK_CASES = 16
"""Most cases in one decode worker's task (runner/decode_pool.py)."""
POOL_MIN_CASES = 32
"""Fewer cases are decoded in this process: starting workers would cost more."""
ANNOTATION_OF = {"single_label": ("single_label", "multi_label"),
                 "multi_label": ("single_label", "multi_label"),
                 "boxes": ("boxes",), "masks": ("masks",)}
"""Which manifest annotation types each label mode can train on."""

Progress = Callable[[int, int], None]
"""``progress(done, total)`` while cases are decoded."""

__all__ = ["MAX_IMAGE_BYTES", "CaseReadError", "DatasetError", "PreparedData", "prepare",
           "read_image"]


class CaseRows(Protocol):
    """What the training loop reads of ``x`` and ``masks``: an ndarray, or over the cache
    budget runner/shards.py's ``ShardedArray``, which gathers the rows from shards (a
    protocol, so that this module need not import runner/shards.py, which builds on it)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def nbytes(self) -> int: ...

    def __getitem__(self, idx: Any) -> np.ndarray: ...


@dataclass
class PreparedData:
    """Everything the training loop needs, memory-mapped or in memory."""

    x: np.ndarray | CaseRows
    """(N, C, H, W) uint8, values 0..255 for [0, 1]; normalised on the device. Over the cache
    budget a ``ShardedArray``: indexing gathers the rows from shards (runner/shards.py)."""
    y: np.ndarray
    """Class indices (single-label), multi-hot (multi-label), or for boxes and masks the
    multi-hot of the classes a case shows (what the split balances on)."""
    case_ids: list[str]
    patient_ids: list[str | None]
    split: np.ndarray
    classes: list[str]
    label_mode: str
    cache_path: Path
    cache_hit: bool
    boxes: list[np.ndarray] | None = None
    """Per case (k, 5) float32 ``x1, y1, x2, y2, label`` (label 1-based) in pixels."""
    masks: np.ndarray | CaseRows | None = None
    """(N, H, W) uint8 class indices, 0 background."""
    series: dict[str, SeriesInfo] = field(default_factory=dict)
    """The manifest's series table (slice order, exam labels: runner/pe_metrics.py)."""
    case_series: list[str | None] = field(default_factory=list)
    """Each case's series key, in case order."""
    shards: Any = None
    """runner/shards.py's ``ShardSet`` when the data streams from shards (over
    ``runner_cache_budget_bytes``)."""

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


@dataclass
class _Arrays:
    """What decoding produces and the cache stores."""

    x: np.ndarray
    boxes: list[np.ndarray] | None = None
    masks: np.ndarray | None = None


def cache_key(spec: TrainingSpec) -> str:
    """(manifest sha256, preprocessing, targets) -> directory name.

    The targets part (label mode and class order) matters because boxes and
    masks are cached beside the pixels; a code change bumps CACHE_VERSION.
    """
    prep = json.dumps(spec.preprocessing.model_dump(mode="json"), sort_keys=True)
    targets = json.dumps([spec.label_mode, spec.classes])
    prep_hash = hashlib.sha256(f"v{CACHE_VERSION}:{prep}:{targets}".encode()).hexdigest()
    return f"{spec.dataset.sha256[:24]}-{prep_hash[:24]}"


def prepare(
    spec: TrainingSpec,
    manifest: DatasetManifest,
    store: ObjectStore,
    cache_dir: Path,
    progress: Progress | None = None,
    *,
    workers: int = 0,
) -> PreparedData:
    """Download, decode and preprocess every case once; later calls hit the cache.
    (runner/shards.py ``prepare_within_budget`` comes here when the cache fits.)"""
    _check_compatible(spec, manifest)
    classification = spec.label_mode in ("single_label", "multi_label")
    if classification:  # label errors are reported before any download
        labels = encode_labels(manifest.cases, spec.classes, spec.label_mode, spec.class_map)
    case_ids = [c.case_id for c in manifest.cases]
    path = cache_dir / cache_key(spec)
    arrays = _load_cache(path, case_ids, spec)
    hit = arrays is not None
    if arrays is None:
        build = partial(_build, spec, manifest, store, progress, workers)
        arrays = _save_cache(path, case_ids, build, _x_shape(spec, len(case_ids)))
        arrays = _load_cache(path, case_ids, spec) or arrays  # train from the mapped copy
    elif progress is not None:
        progress(len(case_ids), len(case_ids))
    k = len(spec.classes)
    if classification:
        y = labels
    elif arrays.boxes is not None:
        y = presence_from_boxes(arrays.boxes, k)
    else:
        assert arrays.masks is not None
        y = presence_from_masks(arrays.masks, k)
    return PreparedData(
        x=arrays.x, y=y, case_ids=case_ids,
        patient_ids=[c.patient_id for c in manifest.cases],
        split=assign_splits(manifest.cases, y), classes=list(spec.classes),
        label_mode=spec.label_mode, cache_path=path, cache_hit=hit,
        boxes=arrays.boxes, masks=arrays.masks, series=dict(manifest.series),
        case_series=[c.series for c in manifest.cases],
    )


def _check_compatible(spec: TrainingSpec, manifest: DatasetManifest) -> None:
    problems = []
    if spec.dataset.dataset_id != manifest.id:
        problems.append(f"spec is for dataset {spec.dataset.dataset_id}, manifest is {manifest.id}")
    if manifest.annotation_type not in ANNOTATION_OF[spec.label_mode]:
        problems.append(f"annotation type {manifest.annotation_type} cannot train "
                        f"label mode {spec.label_mode}")
    if spec.label_mode == "masks":
        problems += [f"{c.case_id}: no mask" for c in manifest.cases if c.mask is None]
    if problems:
        raise DatasetError(problems)


def _build(
    spec: TrainingSpec,
    manifest: DatasetManifest,
    store: ObjectStore,
    progress: Progress | None,
    workers: int,
    out: np.ndarray | None = None,
) -> _Arrays:
    """Locate (local store: in place) or download (threads: I/O) the files, decode them
    on ``workers`` processes (runner/decode_pool.py; 0: every core), gather every
    failure at once.

    The pixels go straight into ``out`` (the cache file being written, memory-mapped)
    or a new array, in case order. A few chunks of cases are in flight at a time, which
    bounds the temporary disk and memory to a few files per worker, not the dataset.
    """
    cases, p = manifest.cases, spec.preprocessing
    got = _Gathered(out if out is not None else np.empty(_x_shape(spec, len(cases)), np.uint8),
                    masks=np.zeros((len(cases), p.image_size, p.image_size), np.uint8)
                    if spec.label_mode == "masks" else None)
    workers = resolve_workers(workers)
    size = _chunk_size(spec, len(cases), workers)
    chunks = [range(i, min(i + size, len(cases))) for i in range(0, len(cases), size)]
    recipe = Recipe(p, spec.label_mode == "masks", len(spec.classes))
    plan = neighbour_keys(manifest) if p.slices == "adjacent" else {}
    copy = type(store) is not LocalStore  # a subclass may not keep its files where uri() says
    with (
        tempfile.TemporaryDirectory(prefix="radtrain-prep-") as tmp,
        ThreadPoolExecutor(max(4, workers)) if copy else nullcontext() as io,
        DecodePool(min(workers, len(chunks)) if len(cases) >= POOL_MIN_CASES else 1,
                   recipe, Target.of(out)) as pool,
    ):
        locate = partial(case_files.locate, dataset_id=manifest.id, store=store, tmp=Path(tmp),
                         plan=plan, copy=copy)
        inflight: set[Future[list[Decoded]]] = set()
        for jobs in located(chunks, cases, locate, io, got.errors):
            while len(inflight) >= 2 * pool.workers:
                inflight = _take(inflight, got, progress, len(cases))
            inflight.add(pool.submit(jobs))
        while inflight:
            inflight = _take(inflight, got, progress, len(cases))
    boxes = _boxes(spec, cases, got) if spec.label_mode == "boxes" else None
    if got.errors:
        raise DatasetError([got.errors[i] for i in sorted(got.errors)])
    return _Arrays(got.x, boxes, got.masks)


@dataclass
class _Gathered:
    """Where the workers' results land, by case index."""

    x: np.ndarray
    masks: np.ndarray | None = None
    hw: dict[int, tuple[int, int]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)


def _x_shape(spec: TrainingSpec, n: int) -> tuple[int, int, int, int]:
    p = spec.preprocessing
    return (n, p.channels, p.image_size, p.image_size)


def _chunk_size(spec: TrainingSpec, n: int, workers: int) -> int:
    """Cases per worker task: enough to amortise the hand-off, at most ~4 MiB of pixels
    each, and small enough that every worker gets several."""
    per_case = int(np.prod(_x_shape(spec, 1)))
    return max(1, min(CHUNK_CASES, (4 << 20) // per_case, n // (workers * 4)))


def _take(inflight: set[Future[list[Decoded]]], got: _Gathered, progress: Progress | None,
          total: int) -> set[Future[list[Decoded]]]:
    """Wait for a chunk, write its cases into place; the rest stay in flight."""
    finished, rest = wait(inflight, return_when=FIRST_COMPLETED)
    for fut in finished:
        for r in fut.result():
            if r.busy_s is not None:
                raise DecodeBusy(r.busy_s)
            if r.error is not None or r.hw is None:
                got.errors[r.index] = r.error or f"case {r.index}: nothing decoded"
                continue
            if r.x is not None:  # else a worker wrote it into the cache file
                got.x[r.index] = r.x
            got.hw[r.index] = r.hw
            if got.masks is not None and r.mask is not None:
                got.masks[r.index] = r.mask
    if progress is not None:
        progress(len(got.hw) + len(got.errors), total)
    return rest


def _boxes(spec: TrainingSpec, cases: list[Case], got: _Gathered) -> list[np.ndarray]:
    """Each case's boxes in the preprocessed frame of its decoded image."""
    size, out = spec.preprocessing.image_size, []
    for i, case in enumerate(cases):
        if i not in got.hw:
            out.append(np.zeros((0, 5), np.float32))
            continue
        try:
            out.append(scale_boxes(case.boxes, spec.classes, got.hw[i], size))
        except ValueError as exc:
            got.errors[i] = CaseReadError(label_of(case), str(exc)).message
    return out


def _load_cache(path: Path, case_ids: list[str], spec: TrainingSpec) -> _Arrays | None:
    """A cache that is unreadable or does not match the cases is rebuilt, not trusted."""
    p = spec.preprocessing
    try:
        meta = json.loads((path / "meta.json").read_text())
        x = np.load(path / "x.npy", mmap_mode="r")
        boxes = masks = None
        if spec.label_mode == "boxes":
            boxes = unpack_boxes(np.load(path / "boxes.npy"), np.load(path / "box_offsets.npy"))
        elif spec.label_mode == "masks":
            masks = np.load(path / "masks.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if meta.get("case_ids") != case_ids or x.shape[1:] != (p.channels, p.image_size,
                                                            p.image_size):
        return None
    if masks is not None and masks.shape != (len(case_ids), p.image_size, p.image_size):
        return None
    return _Arrays(x, boxes, masks)


def _save_cache(path: Path, case_ids: list[str], build: Callable[[np.ndarray], _Arrays],
                shape: tuple[int, ...]) -> _Arrays:
    """Decode straight into a sibling directory's ``x.npy`` (memory-mapped, its disk
    reserved first, so a full disk is an error and not a crash), then rename it into
    place: a crash never leaves half a cache, and the pixels are written once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        arrays = build(_open_x(tmp / "x.npy", shape))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if not isinstance(arrays.x, np.memmap):  # no cases: nothing to map
            np.save(tmp / "x.npy", arrays.x)
        if arrays.boxes is not None:
            flat, offsets = pack_boxes(arrays.boxes)
            np.save(tmp / "boxes.npy", flat)
            np.save(tmp / "box_offsets.npy", offsets)
        if arrays.masks is not None:
            np.save(tmp / "masks.npy", arrays.masks)
        (tmp / "meta.json").write_text(json.dumps({"version": CACHE_VERSION,
                                                   "case_ids": case_ids}))
        if path.exists():  # a stale or concurrent copy: ours is as good
            shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / "meta.json").is_file():
            raise
    return arrays


def _open_x(file: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A new uint8 ``.npy`` of ``shape``, memory-mapped for writing, its blocks allocated
    now: writing a mapped page past a full disk would kill the process (SIGBUS)."""
    if not np.prod(shape):
        return np.zeros(shape, np.uint8)
    x = np.lib.format.open_memmap(file, mode="w+", dtype=np.uint8, shape=shape)
    if hasattr(os, "posix_fallocate"):
        with open(file, "rb+") as fh:
            try:
                os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
    return x
