"""Preparing the training arrays (DESIGN.md §6, §8).

Decoding (``imaging.reader``) happens once per (manifest,
preprocessing, targets); the result is cached on local disk as plain ``.npy``
files, so a retry, a resume or a second task on the same data starts training
at once, and the training loop memory-maps the cache instead of holding a
second copy (DataLoader workers share the mapped pages).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from imaging.reader import MAX_IMAGE_BYTES, CaseReadError, read_image
from imaging.transforms import preprocess, to_uint8
from infra.errors import TransientError
from infra.store import InvalidKey, ObjectNotFound, ObjectStore, StoreUnavailable
from runner.slices import adjacent_stack, anatomical, neighbour_keys
from runner.split import DatasetError, assign_splits, encode_labels
from runner.targets import (
    pack_boxes,
    presence_from_boxes,
    presence_from_masks,
    read_mask,
    scale_boxes,
    unpack_boxes,
)
from schemas.dataset import Case, DatasetManifest, SeriesInfo
from schemas.spec import TrainingSpec

CACHE_VERSION = 2
ANNOTATION_OF = {"single_label": ("single_label", "multi_label"),
                 "multi_label": ("single_label", "multi_label"),
                 "boxes": ("boxes",), "masks": ("masks",)}
"""Which manifest annotation types each label mode can train on."""

Progress = Callable[[int, int], None]
"""``progress(done, total)`` while cases are decoded."""

__all__ = ["MAX_IMAGE_BYTES", "CaseReadError", "DatasetError", "PreparedData", "prepare",
           "read_image"]


@dataclass
class PreparedData:
    """Everything the training loop needs, memory-mapped or in memory."""

    x: np.ndarray
    """(N, C, H, W) uint8, values 0..255 for [0, 1]; normalised on the device."""
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
    masks: np.ndarray | None = None
    """(N, H, W) uint8 class indices, 0 background."""
    series: dict[str, SeriesInfo] = field(default_factory=dict)
    """The manifest's series table (slice order, exam labels: runner/pe_metrics.py)."""
    case_series: list[str | None] = field(default_factory=list)
    """Each case's series key, in case order."""

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
    workers: int = 4,
) -> PreparedData:
    """Download, decode and preprocess every case once; later calls hit the cache."""
    _check_compatible(spec, manifest)
    classification = spec.label_mode in ("single_label", "multi_label")
    if classification:  # label errors are reported before any download
        labels = encode_labels(manifest.cases, spec.classes, spec.label_mode, spec.class_map)
    case_ids = [c.case_id for c in manifest.cases]
    path = cache_dir / cache_key(spec)
    arrays = _load_cache(path, case_ids, spec)
    hit = arrays is not None
    if arrays is None:
        arrays = _build(spec, manifest, store, progress, workers)
        _save_cache(path, arrays, case_ids)
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
) -> _Arrays:
    """Download ahead in threads (I/O), decode here (CPU), gather every failure at once.

    The look-ahead window bounds the temporary disk used to a few files, not
    the whole dataset.
    """
    cases, errors = manifest.cases, []
    xs: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    ahead = max(1, workers) * 4
    plan = neighbour_keys(manifest) if spec.preprocessing.slices == "adjacent" else {}
    with (
        tempfile.TemporaryDirectory(prefix="radtrain-prep-") as tmp,
        ThreadPoolExecutor(max(1, workers)) as pool,
    ):
        fetch = partial(_download, dataset_id=manifest.id, store=store, tmp=Path(tmp),
                        plan=plan)
        pending = deque(pool.submit(fetch, c) for c in cases[:ahead])
        for done, case in enumerate(cases, start=1):
            job = pending.popleft()
            if done - 1 + ahead < len(cases):
                pending.append(pool.submit(fetch, cases[done - 1 + ahead]))
            try:
                x, box, mask = _decode(case, job.result(), spec)
                xs.append(x)
                if box is not None:
                    boxes.append(box)
                if mask is not None:
                    masks.append(mask)
            except CaseReadError as exc:
                errors.append(exc.message)
            if progress is not None:
                progress(done, len(cases))
    if errors:
        raise DatasetError(errors)
    return _Arrays(np.stack(xs), boxes if spec.label_mode == "boxes" else None,
                   np.stack(masks) if spec.label_mode == "masks" else None)


def _label(case: Case) -> str:
    return f"{case.case_id} ({case.images[len(case.images) // 2]})"


def _fetch(store: ObjectStore, key: str, local: Path, label: str, what: str) -> Path:
    try:
        return store.get_file(key, local)
    except ObjectNotFound as exc:
        raise CaseReadError(label, f"{what} not found in the store") from exc
    except InvalidKey as exc:
        raise CaseReadError(label, f"invalid {what} key ({exc})") from exc
    except StoreUnavailable as exc:
        raise TransientError("store_unavailable", f"reading {key}: {exc}") from exc


def _download(case: Case, *, dataset_id: str, store: ObjectStore, tmp: Path,
              plan: dict[str, list[str]] | None = None) -> tuple[list[Path], Path | None]:
    """The middle image of the case's stack (the 2-D networks see one slice), and its mask;
    with 2.5D input (``plan``, runner/slices.py) its previous and next slice too."""
    label = _label(case)
    keys = (plan or {}).get(case.case_id) or [case.images[len(case.images) // 2]]
    images = [_fetch(store, f"datasets/{dataset_id}/{key}", tmp / f"{case.case_id}.{i}.img",
                     label, "image") for i, key in enumerate(keys)]
    mask = None
    if case.mask is not None:
        mask = _fetch(store, f"datasets/{dataset_id}/{case.mask}", tmp / f"{case.case_id}.mask",
                      label, "mask")
    return images, mask


def _decode(case: Case, local: tuple[list[Path], Path | None], spec: TrainingSpec
            ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Pixels, and the targets mapped into the same preprocessed frame."""
    image_paths, mask_path = local
    size = spec.preprocessing.image_size
    try:
        imgs = [anatomical(read_image(p, source=_label(case)), p) for p in image_paths]
        img = imgs[len(imgs) // 2]
        frame = img.frame()
        hw = (int(frame.shape[0]), int(frame.shape[1]))
        if spec.preprocessing.slices == "adjacent":
            x = to_uint8(adjacent_stack(imgs, spec.preprocessing))
        else:
            x = to_uint8(preprocess(img, spec.preprocessing))
        box = mask = None
        if spec.label_mode == "boxes":
            box = scale_boxes(case.boxes, spec.classes, hw, size)
        elif spec.label_mode == "masks" and mask_path is not None:
            mask = read_mask(mask_path, hw, size, len(spec.classes), _label(case))
        return x, box, mask
    except ValueError as exc:
        raise CaseReadError(_label(case), str(exc)) from exc
    finally:
        for path in image_paths:
            path.unlink(missing_ok=True)
        if mask_path is not None:
            mask_path.unlink(missing_ok=True)


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


def _save_cache(path: Path, arrays: _Arrays, case_ids: list[str]) -> None:
    """Write a sibling directory and rename it into place: a crash never leaves half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent))
    try:
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
