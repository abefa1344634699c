"""Preparing the training arrays (DESIGN.md §6, §8).

Decoding (``infra.imaging.reader``) happens once per (manifest,
preprocessing); the result is cached on local disk so a retry, a resume or a
second task on the same data starts training at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from infra.errors import TransientError
from infra.imaging.reader import MAX_IMAGE_BYTES, CaseReadError, read_image
from infra.imaging.transforms import preprocess, to_uint8
from infra.store import InvalidKey, ObjectNotFound, ObjectStore, StoreUnavailable
from runner.split import DatasetError, assign_splits, encode_labels
from schemas.dataset import Case, DatasetManifest
from schemas.spec import TrainingSpec

CACHE_VERSION = 1

Progress = Callable[[int, int], None]
"""``progress(done, total)`` while cases are decoded."""

__all__ = ["MAX_IMAGE_BYTES", "CaseReadError", "DatasetError", "PreparedData", "prepare",
           "read_image"]


# --- preparing -----------------------------------------------------------------


@dataclass
class PreparedData:
    """Everything the training loop needs, already in memory."""

    x: np.ndarray
    """(N, C, H, W) uint8, values 0..255 for [0, 1]; normalised on the device."""
    y: np.ndarray
    case_ids: list[str]
    patient_ids: list[str | None]
    split: np.ndarray
    classes: list[str]
    label_mode: str
    cache_path: Path
    cache_hit: bool

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def cache_key(spec: TrainingSpec) -> str:
    """(manifest sha256, preprocessing) -> file name; a code change bumps CACHE_VERSION."""
    prep = json.dumps(spec.preprocessing.model_dump(mode="json"), sort_keys=True)
    prep_hash = hashlib.sha256(f"v{CACHE_VERSION}:{prep}".encode()).hexdigest()
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
    y = encode_labels(manifest.cases, spec.classes, spec.label_mode)
    split = assign_splits(manifest.cases, y)
    case_ids = [c.case_id for c in manifest.cases]
    path = cache_dir / f"{cache_key(spec)}.npz"
    x = _load_cache(path, case_ids, spec)
    hit = x is not None
    if x is None:
        x = _build(spec, manifest, store, progress, workers)
        _save_cache(path, x, case_ids)
    elif progress is not None:
        progress(len(case_ids), len(case_ids))
    return PreparedData(
        x=x,
        y=y,
        case_ids=case_ids,
        patient_ids=[c.patient_id for c in manifest.cases],
        split=split,
        classes=list(spec.classes),
        label_mode=spec.label_mode,
        cache_path=path,
        cache_hit=hit,
    )


def _check_compatible(spec: TrainingSpec, manifest: DatasetManifest) -> None:
    problems = []
    if spec.dataset.dataset_id != manifest.id:
        problems.append(f"spec is for dataset {spec.dataset.dataset_id}, manifest is {manifest.id}")
    if manifest.annotation_type not in ("single_label", "multi_label"):
        problems.append(f"annotation type {manifest.annotation_type} is not classification")
    if problems:
        raise DatasetError(problems)


def _build(
    spec: TrainingSpec,
    manifest: DatasetManifest,
    store: ObjectStore,
    progress: Progress | None,
    workers: int,
) -> np.ndarray:
    """Download ahead in threads (I/O), decode here (CPU), gather every failure at once.

    The look-ahead window bounds the temporary disk used to a few files, not
    the whole dataset.
    """
    cases, out, errors = manifest.cases, [], []
    ahead = max(1, workers) * 4
    with (
        tempfile.TemporaryDirectory(prefix="radtrain-prep-") as tmp,
        ThreadPoolExecutor(max(1, workers)) as pool,
    ):
        fetch = partial(_download, dataset_id=manifest.id, store=store, tmp=Path(tmp))
        pending = deque(pool.submit(fetch, c) for c in cases[:ahead])
        for done, case in enumerate(cases, start=1):
            job = pending.popleft()
            if done - 1 + ahead < len(cases):
                pending.append(pool.submit(fetch, cases[done - 1 + ahead]))
            try:
                out.append(_decode(case, job.result(), spec))
            except CaseReadError as exc:
                errors.append(exc.message)
            if progress is not None:
                progress(done, len(cases))
    if errors:
        raise DatasetError(errors)
    return np.stack(out)


def _label(case: Case) -> str:
    return f"{case.case_id} ({case.images[len(case.images) // 2]})"


def _download(case: Case, *, dataset_id: str, store: ObjectStore, tmp: Path) -> Path:
    """The middle image of the case's stack: the 2-D networks see one slice."""
    key = f"datasets/{dataset_id}/{case.images[len(case.images) // 2]}"
    local = tmp / f"{case.case_id}.img"
    try:
        return store.get_file(key, local)
    except ObjectNotFound as exc:
        raise CaseReadError(_label(case), "image not found in the store") from exc
    except InvalidKey as exc:
        raise CaseReadError(_label(case), f"invalid image key ({exc})") from exc
    except StoreUnavailable as exc:
        raise TransientError("store_unavailable", f"reading {key}: {exc}") from exc


def _decode(case: Case, local: Path, spec: TrainingSpec) -> np.ndarray:
    try:
        img = read_image(local, source=_label(case))
        return to_uint8(preprocess(img, spec.preprocessing))
    except ValueError as exc:
        raise CaseReadError(_label(case), str(exc)) from exc
    finally:
        local.unlink(missing_ok=True)


def _load_cache(path: Path, case_ids: list[str], spec: TrainingSpec) -> np.ndarray | None:
    """A cache that is unreadable or does not match the cases is rebuilt, not trusted."""
    if not path.is_file():
        return None
    p = spec.preprocessing
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, ids = npz["x"], npz["case_ids"].tolist()
    except Exception:
        return None
    if ids != case_ids or x.shape[1:] != (p.channels, p.image_size, p.image_size):
        return None
    return np.asarray(x)


def _save_cache(path: Path, x: np.ndarray, case_ids: list[str]) -> None:
    """Write beside the target and rename, so a crash never leaves half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, x=x, case_ids=np.array(case_ids))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
