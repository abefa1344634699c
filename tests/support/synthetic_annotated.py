"""Synthetic annotated DICOM datasets: bright blobs with boxes, or with class-index masks.

The detection and segmentation paths need real files end to end (DICOM
decode, windowing, box scaling, mask PNGs) without patient data. Each case
is a head-CT slice from ``radtrain.synthetic.ct`` with zero to two hyperdense blobs
inside the brain; the blobs are the objects: a box is the blob's pixel
extent, a mask pixel holds the blob's class index (0 background,
i = classes[i - 1]). About one case in five has no object, so negatives and
empty masks (Dice's empty-vs-empty rule) are exercised.

numpy, Pillow and pydicom only (no torch): the CLI and tests import this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from radtrain.synthetic.ct import SyntheticCase, _dataset, _ellipse, _erode, _head_ct

Kind = Literal["boxes", "masks"]
CLASSES: tuple[str, ...] = ("lesion", "calcification")
HU = {1: (70.0, 90.0), 2: (250.0, 400.0)}
"""HU range of each class's blobs: a bleed-like and a calcification-like density."""
CASES_PER_PATIENT = 2


@dataclass(frozen=True)
class AnnotatedCase:
    case_id: str
    file: str
    patient_id: str
    boxes: list[dict[str, Any]] = field(default_factory=list)
    """``schemas.dataset.Box`` dicts in pixel coordinates of the image."""
    mask_file: str | None = None


def generate_annotated_dataset(out_dir: Path, n_cases: int, seed: int, kind: Kind,
                               size: int = 64, classes: tuple[str, ...] = CLASSES,
                               ) -> list[AnnotatedCase]:
    """Write ``n_cases`` CT DICOM files (and mask PNGs for ``masks``); deterministic."""
    if not 1 <= len(classes) <= len(HU):
        raise ValueError(f"1 to {len(HU)} classes")
    if n_cases < 2 or size < 32:
        raise ValueError("need n_cases >= 2 and size >= 32")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n_cases):
        case_id = f"case_{i:04d}"
        patient = f"ANN{seed:04d}P{i // CASES_PER_PATIENT:04d}"
        hu = _head_ct(rng, size, False)
        labels = _blob_labels(rng, i, len(classes))
        mask = _add_blobs(rng, hu, labels)
        meta = SyntheticCase(case_id, f"{case_id}.dcm", "annotated", patient)
        _dataset(meta, seed, "CT", hu, instance=i % CASES_PER_PATIENT + 1).save_as(
            out_dir / meta.file, enforce_file_format=True)
        boxes = [_box(mask == k, classes[k - 1]) for k in range(1, len(classes) + 1)
                 if (mask == k).any()]
        mask_file = None
        if kind == "masks":
            mask_file = f"{case_id}_mask.png"
            Image.fromarray(mask).save(out_dir / mask_file)
        cases.append(AnnotatedCase(case_id, meta.file, patient, boxes if kind == "boxes" else [],
                                   mask_file))
    return cases


def _blob_labels(rng: np.random.Generator, i: int, n_classes: int) -> list[int]:
    """Every fifth case is empty; the others show class 1 and/or the next ones."""
    if i % 5 == 4:
        return []
    labels = [1 + (i % n_classes)]
    if n_classes > 1 and rng.random() < 0.25:
        labels.append(1 + ((i + 1) % n_classes))
    return labels


def _add_blobs(rng: np.random.Generator, hu: np.ndarray, labels: list[int]) -> np.ndarray:
    """Paint one blob per label into ``hu``; returns the (H, W) uint8 class-index mask."""
    size = hu.shape[0]
    brain = _erode(hu > 0, 6) & (hu < 200)
    mask = np.zeros(hu.shape, dtype=np.uint8)
    for label in labels:
        free = brain & (mask == 0)
        ys, xs = np.nonzero(_erode(free, 5) if free.any() else brain)
        k = int(rng.integers(len(ys)))
        r = size * (rng.uniform(0.07, 0.12) if label == 1 else rng.uniform(0.04, 0.06))
        blob = _ellipse(hu.shape, float(ys[k]), float(xs[k]), r, r * rng.uniform(0.7, 1.3),
                        rng.uniform(0, np.pi)) & brain & (mask == 0)
        if not blob.any():
            continue
        lo, hi = HU[label]
        hu[blob] = rng.uniform(lo, hi)
        mask[blob] = label
    return mask


def _box(region: np.ndarray, label: str) -> dict[str, Any]:
    ys, xs = np.nonzero(region)
    return {"label": label, "x_min": float(xs.min()), "y_min": float(ys.min()),
            "x_max": float(xs.max() + 1), "y_max": float(ys.max() + 1)}


def annotated_manifest(dataset_id: str, tenant: str, cases: list[AnnotatedCase], kind: Kind,
                       classes: tuple[str, ...] = CLASSES) -> dict[str, Any]:
    """A whole ``DatasetManifest`` dict; files are expected under ``cases/`` in the store."""
    rows = []
    for c in cases:
        row: dict[str, Any] = {"case_id": c.case_id, "images": [f"cases/{c.file}"],
                               "patient_id": c.patient_id}
        if kind == "boxes":
            row["boxes"] = c.boxes
        else:
            row["mask"] = f"cases/{c.mask_file}"
        rows.append(row)
    return {"id": dataset_id, "tenant": tenant, "name": f"synthetic {kind} ({len(cases)} cases)",
            "annotation_type": kind, "modality": "CT", "classes": list(classes), "cases": rows}
