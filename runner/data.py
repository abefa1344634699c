"""Reading cases and preparing the training arrays (DESIGN.md §6, §8, §10).

Images are untrusted input: every way a file can be wrong becomes one
``CaseReadError`` naming the file, never a crash deep inside a decoder.
Decoding happens once per (manifest, preprocessing); the result is cached on
local disk so a retry, a resume or a second task on the same data starts
training at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_rescale

from infra.errors import PermanentError, TransientError
from infra.store import InvalidKey, ObjectNotFound, ObjectStore, StoreUnavailable
from runner.transforms import ImageArray, preprocess, to_uint8
from schemas.dataset import Case, DatasetManifest
from schemas.spec import TrainingSpec

MAX_IMAGE_BYTES = 512 * 1024 * 1024
CACHE_VERSION = 1
VAL_FRACTION = 0.2
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PNG_MAGIC, _JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"

Progress = Callable[[int, int], None]
"""``progress(done, total)`` while cases are decoded."""


class CaseReadError(PermanentError):
    """One case's image could not be read; the message names the file and why."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__("case_unreadable", f"{source}: {reason}")
        self.source = source
        self.reason = reason


class DatasetError(PermanentError):
    """The dataset as a whole cannot be trained on; ``problems`` lists every cause."""

    def __init__(self, problems: Sequence[str]) -> None:
        shown = "; ".join(problems[:20]) + (
            f"; ... {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        super().__init__("dataset_invalid", shown)
        self.problems = list(problems)


# --- reading -------------------------------------------------------------------


def read_image(
    path: Path, *, max_bytes: int = MAX_IMAGE_BYTES, source: str | None = None
) -> ImageArray:
    """Decode one DICOM, PNG or JPEG file to physical units (HU for CT).

    The format is sniffed from the bytes, not trusted from the name.
    """
    name = source or path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise CaseReadError(name, f"cannot open file ({exc.strerror or exc})") from exc
    if size > max_bytes:
        raise CaseReadError(name, f"file is {size} bytes, over the {max_bytes}-byte limit")
    if size == 0:
        raise CaseReadError(name, "file is empty")
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return _read_pillow(path, name, max_bytes)
    return _read_dicom(path, name, max_bytes, preamble=head[128:132] == b"DICM")


def _read_dicom(path: Path, name: str, max_bytes: int, *, preamble: bool) -> ImageArray:
    """pydicom with ``force`` (preamble-less files exist); modality LUT applied.

    Any exception from the parser or a decoder becomes a CaseReadError: the
    input is untrusted, so no failure mode of a third-party decoder may escape.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hostile files warn a lot; the error says enough
        try:
            ds = pydicom.dcmread(path, force=True)
            if not any(tag in ds for tag in _PIXEL_TAGS):
                dicom = preamble or len(ds) > 2
                reason = "DICOM file has no pixel data (PixelData missing)"
                raise CaseReadError(name, reason if dicom else "not a DICOM, PNG or JPEG image")
            _check_declared_size(ds, name, max_bytes)
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
            modality = str(ds.get("Modality", "") or "OT")
            arr = np.asarray(ds.pixel_array)
            if photometric in ("MONOCHROME1", "MONOCHROME2"):
                arr = apply_rescale(arr, ds)
            elif photometric == "PALETTE COLOR":
                arr = apply_color_lut(arr, ds)
        except CaseReadError:
            raise
        except Exception as exc:
            raise CaseReadError(name, f"not a decodable DICOM image ({_why(exc)})") from exc
    if arr.ndim >= 3 and arr.shape[-1] == 3 and photometric not in ("MONOCHROME1", "MONOCHROME2"):
        photometric = "RGB"  # pydicom converts YBR to RGB by default
        arr = arr[arr.shape[0] // 2] if arr.ndim == 4 else arr
    return _checked(arr, name, modality.strip(), photometric)


def _check_declared_size(ds: pydicom.Dataset, name: str, max_bytes: int) -> None:
    """Refuse before decoding what would decompress past the limit (zip-bomb style)."""
    if "Rows" not in ds or "Columns" not in ds:
        raise CaseReadError(name, "DICOM image header lacks Rows/Columns")
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if min(rows, cols, frames, samples, bits) <= 0:
        raise CaseReadError(name, f"invalid image dimensions {rows}x{cols}x{frames}")
    decoded = rows * cols * frames * samples * max(bits, 8) // 8
    if decoded > max_bytes:
        raise CaseReadError(name, f"decoded image would be {decoded} bytes, over {max_bytes}")


def _read_pillow(path: Path, name: str, max_bytes: int) -> ImageArray:
    """PNG/JPEG: 8/16-bit grayscale stays one plane, anything else becomes RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.size[0] * im.size[1] * 4 > max_bytes:
                    raise CaseReadError(name, f"{im.size[0]}x{im.size[1]} image is too large")
                im.load()
                if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
                    gray = im.convert("L") if im.mode in ("1", "LA") else im
                    arr, photometric = np.asarray(gray), "MONOCHROME2"
                else:
                    arr, photometric = np.asarray(im.convert("RGB")), "RGB"
    except CaseReadError:
        raise
    except Exception as exc:
        raise CaseReadError(name, f"not a readable PNG/JPEG image ({_why(exc)})") from exc
    return _checked(arr, name, "OT", photometric)


def _checked(arr: np.ndarray, name: str, modality: str, photometric: str) -> ImageArray:
    """Last gate: the shapes the transforms accept, and finite values only."""
    pixels = np.asarray(arr, dtype=np.float32)
    colour = photometric == "RGB"
    ok = (pixels.ndim == 3 and pixels.shape[-1] == 3) if colour else pixels.ndim in (2, 3)
    if not ok or min(pixels.shape) < 1:
        raise CaseReadError(name, f"unsupported pixel array shape {pixels.shape} ({photometric})")
    if not np.isfinite(pixels).all():
        raise CaseReadError(name, "pixel data contains NaN or infinite values")
    return ImageArray(pixels=pixels, modality=modality, photometric=photometric)


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


# --- labels and splits ---------------------------------------------------------


def encode_labels(cases: Sequence[Case], classes: Sequence[str], label_mode: str) -> np.ndarray:
    """(N,) class index for single-label, (N, K) multi-hot float32 for multi-label."""
    index = {c: i for i, c in enumerate(classes)}
    problems: list[str] = []
    for case in cases:
        unknown = sorted(set(case.labels) - index.keys())
        if unknown:
            problems.append(f"{case.case_id}: labels {unknown} are not task classes")
        elif label_mode == "single_label" and len(case.labels) != 1:
            problems.append(f"{case.case_id}: single-label case has {len(case.labels)} labels")
    if problems:
        raise DatasetError(problems)
    if label_mode == "single_label":
        return np.array([index[c.labels[0]] for c in cases], dtype=np.int64)
    y = np.zeros((len(cases), len(classes)), dtype=np.float32)
    for i, case in enumerate(cases):
        y[i, [index[label] for label in case.labels]] = 1.0
    return y


def assign_splits(
    cases: Sequence[Case], y: np.ndarray, val_fraction: float = VAL_FRACTION
) -> np.ndarray:
    """'train' / 'val' / 'test' per case, by patient, deterministic, never leaking.

    Explicit ``split`` fields win and pull the patient's other cases along;
    free patients go to val in the order of their id's hash until the quota
    is met, then patients are moved so every class appears in val if it can.
    """
    groups = _groups(cases)
    fixed = _explicit_splits(cases, groups)
    order = sorted(
        (g for g in groups if g not in fixed), key=lambda g: hashlib.sha256(g.encode()).hexdigest()
    )
    held = {g: s for g, s in fixed.items()}
    n_pool = sum(len(groups[g]) for g in groups if held.get(g) != "test")
    target = max(1, round(val_fraction * n_pool))
    n_val = sum(len(groups[g]) for g, s in held.items() if s == "val")
    for g in order:
        held[g] = "val" if n_val < target else "train"
        n_val += len(groups[g]) if held[g] == "val" else 0
    free_val = [g for g in order if held[g] == "val"]
    if not any(s == "train" for s in held.values()) and free_val:
        held[free_val[-1]] = "train"
    _cover_classes(groups, held, order, _class_sets(y))
    split = np.empty(len(cases), dtype="<U5")
    for g, idx in groups.items():
        split[idx] = held[g]
    for side in ("train", "val"):
        if not (split == side).any():
            raise DatasetError(
                [f"no {side} cases: need at least two patients (or explicit splits)"]
            )
    return split


def _groups(cases: Sequence[Case]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        key = f"patient:{case.patient_id}" if case.patient_id else f"case:{case.case_id}"
        groups.setdefault(key, []).append(i)
    return groups


def _explicit_splits(cases: Sequence[Case], groups: dict[str, list[int]]) -> dict[str, str]:
    fixed: dict[str, str] = {}
    problems: list[str] = []
    for g, idx in groups.items():
        chosen = {cases[i].split for i in idx if cases[i].split is not None}
        if len(chosen) > 1:
            problems.append(
                f"{g} has cases in several explicit splits {sorted(s or '' for s in chosen)}"
            )
        elif chosen:
            fixed[g] = str(chosen.pop())
    if problems:
        raise DatasetError(problems)
    return fixed


def _class_sets(y: np.ndarray) -> list[set[int]]:
    if y.ndim == 1:
        return [{int(v)} for v in y]
    return [set(np.flatnonzero(row).tolist()) for row in y]


def _cover_classes(
    groups: dict[str, list[int]], held: dict[str, str], order: list[str], per_case: list[set[int]]
) -> None:
    """Move free train patients to val until val shows every class train can spare."""

    def classes_of(side: str) -> set[int]:
        return {k for g, s in held.items() if s == side for i in groups[g] for k in per_case[i]}

    for k in sorted(set().union(*per_case)):
        if k in classes_of("val"):
            continue
        in_train = classes_of("train")
        for g in order:
            if held[g] != "train" or not any(k in per_case[i] for i in groups[g]):
                continue
            held[g] = "val"
            if classes_of("train") == in_train:
                break
            held[g] = "train"


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
    """Decode all cases (threads overlap store I/O) and gather every failure at once."""
    total, done = len(manifest.cases), 0
    out: list[np.ndarray | None] = []
    errors: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="radtrain-prep-") as tmp,
        ThreadPoolExecutor(max(1, workers)) as pool,
    ):
        jobs = [
            pool.submit(_one_case, spec, manifest.id, c, store, Path(tmp)) for c in manifest.cases
        ]
        for job in jobs:
            try:
                out.append(job.result())
            except CaseReadError as exc:
                errors.append(exc.message)
                out.append(None)
            done += 1
            if progress is not None:
                progress(done, total)
    if errors:
        raise DatasetError(errors)
    return np.stack([a for a in out if a is not None])


def _one_case(
    spec: TrainingSpec, dataset_id: str, case: Case, store: ObjectStore, tmp: Path
) -> np.ndarray:
    """The middle image of the case's stack: the 2-D networks see one slice."""
    image = case.images[len(case.images) // 2]
    key = f"datasets/{dataset_id}/{image}"
    local = tmp / f"{case.case_id}.img"
    try:
        store.get_file(key, local)
    except ObjectNotFound as exc:
        raise CaseReadError(f"{case.case_id} ({image})", "image not found in the store") from exc
    except InvalidKey as exc:
        raise CaseReadError(f"{case.case_id} ({image})", f"invalid image key ({exc})") from exc
    except StoreUnavailable as exc:
        raise TransientError("store_unavailable", f"reading {key}: {exc}") from exc
    try:
        img = read_image(local, source=f"{case.case_id} ({image})")
        return to_uint8(preprocess(img, spec.preprocessing))
    except ValueError as exc:
        raise CaseReadError(f"{case.case_id} ({image})", str(exc)) from exc
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
