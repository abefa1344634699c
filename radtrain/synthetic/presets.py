"""Synthetic DICOM datasets that fit the presets (specialized flow demo and tests).

Like ``radtrain.synthetic.ct`` (whose phantom pieces and DICOM encoding it reuses):
valid DICOM files whose label is carried by the pixels alone. The
pneumothorax set is chest radiographs (DX) where a positive case has a
collapsed lung edge: a dark, structureless crescent of pleural air at the
apex and side of one lung, with the bright visceral pleural line in front of
it. Every other patient is stored MONOCHROME1 (inverted values, as many CR
systems write them), so a model only learns the finding if the preprocessing
handles the photometric interpretation. Labels use the SIIM-style names
(``pneumothorax``/``normal``) that the preset maps onto its classes.

numpy and pydicom only: the CLI demo and the tests import this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from radtrain.synthetic.ct import (
    CASES_PER_PATIENT,
    SyntheticCase,
    _dataset,
    _ellipse,
    _smooth_noise,
    synthetic_manifest_cases,
)

PTX_LABELS: tuple[str, str] = ("normal", "pneumothorax")
MAX_STORED = 4095

PRESET_DEMO_TUNING: dict[str, Any] = {
    # The preset's recipe at its 512 px would take hours on 2 CPU cores; these
    # overrides (manual tuning) keep its network, weights and preprocessing.
    "image_size": 64,
    "epochs": 8,
    "batch_size": 16,
    "learning_rate": 2e-3,
    "warmup_epochs": 0,
    "freeze_backbone_epochs": 0,
    "augmentation": "light",
    "early_stopping_patience": 0,
    "seed": 0,
}
"""Manual tuning for the pneumothorax preset on ~100 synthetic cases at 64 px."""


def generate_pneumothorax_dataset(out_dir: Path, n_cases: int, seed: int,
                                  size: int = 96) -> list[SyntheticCase]:
    """``n_cases`` chest DX files, balanced labels, two cases per patient; deterministic."""
    if n_cases < 2 or size < 32:
        raise ValueError("need n_cases >= 2 and size >= 32")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = np.array([i % 2 for i in range(n_cases)])
    rng.shuffle(labels)
    cases = []
    for i in range(n_cases):
        label = PTX_LABELS[int(labels[i])]
        patient_no = i // CASES_PER_PATIENT
        case = SyntheticCase(f"case_{i:04d}", f"case_{i:04d}.dcm", label,
                             f"PTX{seed:04d}P{patient_no:04d}")
        pixels = chest_with_ptx(rng, size, label == "pneumothorax")
        ds = _dataset(case, seed, "DX", pixels, instance=i % CASES_PER_PATIENT + 1)
        if patient_no % 2:
            store_monochrome1(ds, pixels)
        ds.save_as(out_dir / case.file, enforce_file_format=True)
        cases.append(case)
    return cases


def pneumothorax_manifest(dataset_id: str, tenant: str,
                          cases: list[SyntheticCase]) -> dict[str, Any]:
    """A ``DatasetManifest`` dict: single-label DX with the SIIM-style label names."""
    return {"id": dataset_id, "tenant": tenant, "name": f"synthetic pneumothorax ({len(cases)})",
            "annotation_type": "single_label", "modality": "DX", "classes": list(PTX_LABELS),
            "cases": synthetic_manifest_cases(cases)}


def chest_with_ptx(rng: np.random.Generator, size: int, ptx: bool) -> np.ndarray:
    """Raw detector values (higher = more attenuation): body, textured lungs, ribs."""
    shape = (size, size)
    img = np.full(shape, 200.0, dtype=np.float32)
    body = _ellipse(shape, size / 2, size / 2, size * 0.48, size * rng.uniform(0.40, 0.46))
    img[body] = 2600 + _smooth_noise(rng, size, 60.0)[body]
    lungs = []
    for side in (-1, 1):
        cx = size / 2 + side * size * 0.2
        ry, rx = size * rng.uniform(0.28, 0.33), size * rng.uniform(0.12, 0.15)
        lung = _ellipse(shape, size * 0.46, cx, ry, rx)
        img[lung] = 1300 + _smooth_noise(rng, size, 120.0)[lung]  # vessels: texture
        lungs.append((lung, cx, ry, rx, side))
    for k in range(5):  # ribs: bright oblique bands over both lungs
        y0 = size * (0.2 + 0.12 * k)
        band = np.abs(np.arange(size)[:, None] - y0 - 0.15 * np.arange(size)[None, :]) < 1.5
        img[band & body] += 250
    if ptx:
        lung, cx, ry, rx, side = lungs[int(rng.integers(2))]
        inner = _ellipse(shape, size * 0.46 + ry * 0.25, cx - side * rx * 0.25,
                         ry * rng.uniform(0.55, 0.7), rx * rng.uniform(0.45, 0.6))
        air = lung & ~inner
        img[air] = rng.uniform(450, 650)  # pleural air: darker than lung, no texture
        edge = inner & ~_ellipse(shape, size * 0.46 + ry * 0.25, cx - side * rx * 0.25,
                                 ry * 0.55 - 1.5, rx * 0.45 - 1.5)
        img[edge & lung] = 1900  # visceral pleural line
    img += rng.normal(0.0, 40.0, shape).astype(np.float32)
    return np.clip(img, 0, MAX_STORED)


def store_monochrome1(ds: Any, pixels: np.ndarray) -> None:
    """Rewrite a MONOCHROME2 dataset as MONOCHROME1: inverted values, inverted window."""
    ds.PhotometricInterpretation = "MONOCHROME1"
    stored = (MAX_STORED - np.clip(np.round(pixels), 0, MAX_STORED)).astype(np.uint16)
    ds.PixelData = stored.tobytes()
