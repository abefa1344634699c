"""Synthetic DICOM datasets for the demo, the tests and the benchmarks.

Real patient data cannot ship with the project, yet every path that touches
pixels (import validation, decoding, windowing, training) must be exercised
with real DICOM files. These files are valid DICOM (file meta, explicit VR
little endian, CT or DX storage classes, realistic headers), and the label
is carried by the pixels alone, so a model that learns it learned something.

Deliberately torch-free: the CLI demo and the gateway tests import this.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

CLASSES: tuple[str, str] = ("normal", "finding")
CASES_PER_PATIENT = 2

DEMO_RECIPE: dict[str, Any] = {
    # Measured on a 2-core CPU, random init, 96 px DICOM -> 64 px, 3 CT windows:
    # seeds 0/1/2 -> val AUC 1.00 (24 cases), AUC on 300 fresh cases 0.999/0.991/1.000,
    # 8-13 s of training. mobilenetv3_small_100 from scratch is unstable at this size.
    "network": "resnet10t",
    "n_cases": 120,
    "image_size": 64,
    "optimizer": "adamw",
    "learning_rate": 3e-3,
    "schedule": "cosine",
    "warmup_epochs": 1,
    "batch_size": 16,
    "epochs": 12,
    "weight_decay": 1e-4,
    "augmentation": "light",
    "loss": "cross_entropy",
    "class_weighting": "none",
    "early_stopping_patience": 0,
    "mixed_precision": True,
    "grad_clip_norm": 1.0,
    "seed": 0,
}
"""Recipe that reaches val AUC >= 0.9 in well under 90 s on a 2-core CPU."""

DEMO_WINDOWS: list[dict[str, float | str]] = [
    {"name": "brain", "center": 40.0, "width": 80.0},
    {"name": "subdural", "center": 80.0, "width": 200.0},
    {"name": "bone", "center": 600.0, "width": 2800.0},
]
"""Head-CT windows stacked as the three input channels of the demo."""


@dataclass(frozen=True)
class SyntheticCase:
    case_id: str
    file: str
    label: str
    patient_id: str


def generate_dicom_dataset(
    out_dir: Path,
    n_cases: int,
    seed: int,
    modality: Literal["CT", "DX"] = "CT",
    size: int = 96,
) -> list[SyntheticCase]:
    """Write ``n_cases`` DICOM files into ``out_dir``; same seed, same bytes of pixels.

    Labels are exactly balanced (shuffled alternation) so a 20 % validation
    split always holds both classes; two cases share each patient so that
    patient-level splitting is exercised.
    """
    if n_cases < 1:
        raise ValueError("n_cases must be >= 1")
    if size < 32:
        raise ValueError("size must be >= 32")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = np.array([i % 2 for i in range(n_cases)])
    rng.shuffle(labels)
    cases: list[SyntheticCase] = []
    for i in range(n_cases):
        label = CLASSES[int(labels[i])]
        patient = f"SYN{seed:04d}P{i // CASES_PER_PATIENT:04d}"
        case = SyntheticCase(f"case_{i:04d}", f"case_{i:04d}.dcm", label, patient)
        if modality == "CT":
            pixels = _head_ct(rng, size, label == "finding")
        else:
            pixels = _chest_dx(rng, size, label == "finding")
        ds = _dataset(case, seed, modality, pixels, instance=i % CASES_PER_PATIENT + 1)
        ds.save_as(out_dir / case.file, enforce_file_format=True)
        cases.append(case)
    return cases


def synthetic_manifest_cases(cases: list[SyntheticCase]) -> list[dict[str, Any]]:
    """Cases as ``schemas.dataset.Case`` dicts, image keys relative to the dataset."""
    return [
        {
            "case_id": c.case_id,
            "images": [f"cases/{c.file}"],
            "labels": [c.label],
            "patient_id": c.patient_id,
        }
        for c in cases
    ]


def synthetic_manifest(
    dataset_id: str,
    tenant: str,
    cases: list[SyntheticCase],
    modality: Literal["CT", "DX"] = "CT",
) -> dict[str, Any]:
    """A whole ``DatasetManifest`` as a dict, so callers need not repeat the class list."""
    return {
        "id": dataset_id,
        "tenant": tenant,
        "name": f"synthetic {modality} ({len(cases)} cases)",
        "annotation_type": "single_label",
        "modality": modality,
        "classes": list(CLASSES),
        "cases": synthetic_manifest_cases(cases),
    }


# --- pixel content -------------------------------------------------------------


def _ellipse(
    shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, angle: float = 0.0
) -> np.ndarray:
    """Boolean mask of a rotated ellipse; the building block of every phantom."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    cos, sin = np.cos(angle), np.sin(angle)
    u = (dx * cos + dy * sin) / rx
    v = (-dx * sin + dy * cos) / ry
    return np.asarray(u * u + v * v <= 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Low-frequency texture so that no two negatives look alike."""
    coarse = rng.normal(0.0, scale, (size // 8 + 2, size // 8 + 2)).astype(np.float32)
    fine = np.kron(coarse, np.ones((8, 8), dtype=np.float32))[:size, :size]
    kernel = np.ones(5, dtype=np.float32) / 5.0
    for axis in (0, 1):
        fine = np.apply_along_axis(lambda m: np.convolve(m, kernel, mode="same"), axis, fine)
    return fine


def _head_ct(rng: np.random.Generator, size: int, finding: bool) -> np.ndarray:
    """Head CT slice in HU: skull ring, brain, ventricles, optional hyperdense bleed."""
    shape = (size, size)
    cy, cx = size / 2 + rng.uniform(-4, 4), size / 2 + rng.uniform(-4, 4)
    ry, rx = size * rng.uniform(0.36, 0.44), size * rng.uniform(0.30, 0.38)
    angle = rng.uniform(-0.3, 0.3)
    thick = rng.uniform(2.5, 4.5)
    outer = _ellipse(shape, cy, cx, ry, rx, angle)
    inner = _ellipse(shape, cy, cx, ry - thick, rx - thick, angle)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[outer] = rng.uniform(700, 1000)
    brain_hu = rng.uniform(30, 42)
    hu[inner] = brain_hu + _smooth_noise(rng, size, 3.0)[inner]
    for side in (-1, 1):  # lateral ventricles: darker CSF, a natural distractor
        vy, vx = cy + rng.uniform(-3, 3), cx + side * size * rng.uniform(0.05, 0.09)
        vent = _ellipse(shape, vy, vx, size * rng.uniform(0.08, 0.13), size * 0.035, angle)
        hu[vent & inner] = rng.uniform(2, 12)
    if rng.random() < 0.4:  # physiological calcification: tiny, far denser than a bleed
        ys, xs = np.nonzero(_erode(inner, 6))
        k = int(rng.integers(len(ys)))
        hu[_ellipse(shape, float(ys[k]), float(xs[k]), 1.2, 1.2)] = rng.uniform(150, 300)
    if finding:
        _add_bleed(rng, hu, inner, size)
    hu += rng.normal(0.0, rng.uniform(3.0, 6.0), shape).astype(np.float32)
    return hu


def _add_bleed(rng: np.random.Generator, hu: np.ndarray, inner: np.ndarray, size: int) -> None:
    """A small hyperdense (60-90 HU) blob somewhere inside the brain."""
    ys, xs = np.nonzero(_erode(inner, 4))
    k = int(rng.integers(len(ys)))
    r = size * rng.uniform(0.035, 0.07)
    blob = _ellipse(
        hu.shape, float(ys[k]), float(xs[k]), r, r * rng.uniform(0.6, 1.4), rng.uniform(0, np.pi)
    )
    hu[blob & inner] = rng.uniform(62, 90)


def _erode(mask: np.ndarray, n: int) -> np.ndarray:
    """Shrink a mask by ``n`` pixels, so a lesion never sits on the skull."""
    out = mask.copy()
    for _ in range(n):
        out[1:-1, 1:-1] &= out[:-2, 1:-1] & out[2:, 1:-1] & out[1:-1, :-2] & out[1:-1, 2:]
        out[0, :] = out[-1, :] = out[:, 0] = out[:, -1] = False
    return out if out.any() else mask


def _chest_dx(rng: np.random.Generator, size: int, finding: bool) -> np.ndarray:
    """Chest radiograph in raw 12-bit detector values: bright body, dark lungs, nodule."""
    shape = (size, size)
    img = np.full(shape, 200.0, dtype=np.float32)
    body = _ellipse(shape, size / 2, size / 2, size * 0.48, size * rng.uniform(0.40, 0.46))
    img[body] = 2600 + _smooth_noise(rng, size, 60.0)[body]
    lungs = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        lungs |= _ellipse(
            shape,
            size * 0.45,
            size / 2 + side * size * 0.18,
            size * rng.uniform(0.28, 0.33),
            size * rng.uniform(0.11, 0.14),
        )
    img[lungs] = 1200 + _smooth_noise(rng, size, 50.0)[lungs]
    if finding:
        ys, xs = np.nonzero(_erode(lungs, 3))
        k = int(rng.integers(len(ys)))
        r = size * rng.uniform(0.04, 0.07)
        img[_ellipse(shape, float(ys[k]), float(xs[k]), r, r)] = rng.uniform(2100, 2600)
    img += rng.normal(0.0, 40.0, shape).astype(np.float32)
    return np.clip(img, 0, 4095)


# --- DICOM encoding ------------------------------------------------------------


def _uid(seed: int, *parts: str) -> UID:
    """Deterministic UIDs: the same seed writes the same identifiers."""
    return generate_uid(entropy_srcs=[str(seed), *parts])


def _dataset(
    case: SyntheticCase, seed: int, modality: str, pixels: np.ndarray, instance: int
) -> Dataset:
    """Wrap pixels in a complete, valid DICOM dataset with file meta."""
    sop_class = CTImageStorage if modality == "CT" else DigitalXRayImageStorageForPresentation
    sop_uid = _uid(seed, case.case_id, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    today = dt.date(2024, 1, 1) + dt.timedelta(days=seed % 365)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = _uid(seed, case.patient_id, "study")
    ds.SeriesInstanceUID = _uid(seed, case.patient_id, "series")
    ds.FrameOfReferenceUID = _uid(seed, case.patient_id, "frame")
    ds.PatientID = case.patient_id
    ds.PatientName = f"Synthetic^{case.patient_id}"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.AccessionNumber = case.patient_id[-8:]
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.Modality = modality
    ds.Manufacturer = "radtrain synthetic"
    ds.SeriesDescription = f"synthetic {modality} ({case.label})"
    if modality == "CT":  # the body part picks the general flow's CT windows (issue 15)
        ds.BodyPartExamined = "HEAD"
        ds.StudyDescription = "CT HEAD WO CONTRAST"
    ds.ImageType = (
        ["DERIVED", "SECONDARY", "AXIAL"] if modality == "CT" else ["DERIVED", "SECONDARY"]
    )
    _encode_pixels(ds, modality, pixels, instance)
    return ds


def _encode_pixels(ds: Dataset, modality: str, pixels: np.ndarray, instance: int) -> None:
    """Store pixels the way scanners do: CT as signed stored values + rescale to HU."""
    size = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    if modality == "CT":
        ds.PixelRepresentation = 1
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -1024
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 80
        ds.PixelSpacing = [round(220.0 / size, 4)] * 2
        ds.SliceThickness = 5.0
        ds.ImagePositionPatient = [-110.0, -110.0, 5.0 * instance]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.KVP = 120
        stored = np.clip(np.round(pixels + 1024.0), -2048, 2047).astype(np.int16)
    else:
        ds.PixelRepresentation = 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PixelSpacing = [round(430.0 / size, 4)] * 2
        ds.ImagerPixelSpacing = ds.PixelSpacing
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ViewPosition = "PA"
        ds.KVP = 110
        stored = np.clip(np.round(pixels), 0, 4095).astype(np.uint16)
    ds.PixelData = stored.tobytes()
