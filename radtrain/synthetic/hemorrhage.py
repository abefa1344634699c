"""Synthetic head-CT slices for the intracranial-hemorrhage preset, at realistic prevalences.

The preset promises a useful model from about 100 cases, and 100 real slices
carry the real class balance: most are normal, and the rarest subtype,
epidural, is usually absent altogether. This generator writes such a batch
in the RSNA 2019 layout (``stage_2_train.csv`` with ``ID_<image>_<subtype>``
rows including ``any``, images ``stage_2_train/ID_<image>.dcm``), so the
importer, the preset and the runner meet the rare-finding case exactly as a
hospital batch would bring it.

Prevalences per image (the share of slices with each label), counted in the
challenge's ``stage_1_train.csv`` (674,258 labelled images; RSNA
Intracranial Hemorrhage Detection, Kaggle 2019, and the dataset paper:
Flanders AE, Prevedello LM, Shih G, et al. "Construction of a Machine
Learning Dataset through Collaboration: The RSNA 2019 Brain CT Hemorrhage
Challenge." Radiology: Artificial Intelligence 2020;2(3):e190211,
doi:10.1148/ryai.2020190211):

===================  ========  ======
label                images    share
===================  ========  ======
any                    97,103  14.40 %
epidural                2,761   0.41 %
intraparenchymal       32,564   4.83 %
intraventricular       23,766   3.52 %
subarachnoid           32,122   4.76 %
subdural               42,496   6.30 %
===================  ========  ======

The subtypes sum to more than ``any`` because one slice can show several.
A batch of ``n`` cases gets ``round(n * share)`` cases of each label
(deterministic expected counts, not a random draw, so 100 cases always have
14 hemorrhages and no epidural): each hemorrhage case gets one subtype, and
the subtype labels left over go to other hemorrhage cases as co-occurrences.

Each subtype is drawn where and how it appears on CT, in acute-blood HU
(60-90): epidural as a biconvex lens against the inner table, subdural as a
crescent along it, subarachnoid as thin lines in the sulci and around the
basal cisterns, intraventricular as blood layering in a ventricle,
intraparenchymal as a rounded clot with a darker rim of oedema.

numpy and pydicom only (like the other synthetic sets).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radtrain.synthetic.ct import (
    CASES_PER_PATIENT,
    SyntheticCase,
    _dataset,
    _ellipse,
    _erode,
    _smooth_noise,
)

SUBTYPES: tuple[str, ...] = ("subarachnoid", "subdural", "epidural", "intraparenchymal",
                             "intraventricular")
"""In the preset's class order."""

PREVALENCE: dict[str, float] = {
    "any": 97_103 / 674_258,
    "epidural": 2_761 / 674_258,
    "intraparenchymal": 32_564 / 674_258,
    "intraventricular": 23_766 / 674_258,
    "subarachnoid": 32_122 / 674_258,
    "subdural": 42_496 / 674_258,
}
"""Share of RSNA 2019 ``stage_1_train.csv`` images with each label (see the module doc)."""

LABELS_CSV = "stage_2_train.csv"
IMAGES_DIR = "stage_2_train"
BLOOD_HU = (62.0, 88.0)


@dataclass(frozen=True)
class HemorrhageCase:
    image_id: str
    """``ID_<hex>``: the RSNA image id (file ``<image_id>.dcm``, case id the same)."""
    labels: tuple[str, ...]
    patient_id: str

    @property
    def file(self) -> str:
        return f"{IMAGES_DIR}/{self.image_id}.dcm"


def expected_counts(n_cases: int) -> dict[str, int]:
    """``round(n * share)`` per label: for 100 cases, 14 any, 0 epidural, 6 subdural ..."""
    return {label: round(n_cases * share) for label, share in PREVALENCE.items()}


def assign_labels(n_cases: int, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """Labels per case with exactly the expected counts (see the module doc)."""
    counts = expected_counts(n_cases)
    n_any = counts.pop("any")
    pool = [s for s in SUBTYPES for _ in range(counts[s])]
    if n_any == 0 or not pool:
        return [() for _ in range(n_cases)]
    n_any = min(n_any, len(pool))
    order = rng.permutation(len(pool))
    sick = [set[str]() for _ in range(n_any)]
    leftover: list[str] = []
    for k, i in enumerate(order):
        if k < n_any:
            sick[k].add(pool[i])
        else:
            leftover.append(pool[i])
    for label in leftover:  # co-occurrences: a hemorrhage case without this subtype yet
        free = [s for s in sick if label not in s]
        if free:
            free[int(rng.integers(len(free)))].add(label)
    labels = [tuple(s for s in SUBTYPES if s in case) for case in sick]
    labels += [()] * (n_cases - n_any)
    return [labels[i] for i in rng.permutation(n_cases)]


def generate_hemorrhage_dataset(out_dir: Path, n_cases: int, seed: int,
                                size: int = 96) -> list[HemorrhageCase]:
    """``out_dir/stage_2_train.csv`` and ``out_dir/stage_2_train/ID_*.dcm``; deterministic.

    Two slices per patient (one series), like the other synthetic sets, so
    patient-level splits and patient-level bootstrap intervals are exercised.
    """
    if n_cases < 1 or size < 48:
        raise ValueError("need n_cases >= 1 and size >= 48")
    rng = np.random.default_rng(seed)
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    cases = []
    for i, labels in enumerate(assign_labels(n_cases, rng)):
        case = HemorrhageCase(f"ID_{seed:03x}{i:06x}", labels,
                              f"ICH{seed:04d}P{i // CASES_PER_PATIENT:04d}")
        hu = head_with_bleeds(rng, size, labels)
        meta = SyntheticCase(case.image_id, case.file, ",".join(labels) or "normal",
                             case.patient_id)
        ds = _dataset(meta, seed, "CT", hu, instance=i % CASES_PER_PATIENT + 1)
        ds.save_as(out_dir / case.file, enforce_file_format=True)
        cases.append(case)
    write_labels(out_dir / LABELS_CSV, cases)
    return cases


def write_labels(path: Path, cases: list[HemorrhageCase]) -> None:
    """The RSNA CSV: six rows per image (``epidural`` ... ``subdural`` and ``any``)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["ID", "Label"])
        for c in cases:
            for label in (*sorted(SUBTYPES), "any"):
                present = bool(c.labels) if label == "any" else label in c.labels
                out.writerow([f"{c.image_id}_{label}", int(present)])


def hemorrhage_manifest(dataset_id: str, tenant: str,
                        cases: list[HemorrhageCase]) -> dict[str, Any]:
    """A ``DatasetManifest`` dict (images under ``cases/``), for tests that skip the import."""
    return {"id": dataset_id, "tenant": tenant, "name": f"synthetic ICH ({len(cases)})",
            "annotation_type": "multi_label", "modality": "CT", "classes": list(SUBTYPES),
            "cases": [{"case_id": c.image_id, "images": [f"cases/{c.image_id}.dcm"],
                       "labels": list(c.labels), "patient_id": c.patient_id} for c in cases]}


# --- pixels -------------------------------------------------------------------------


@dataclass
class Head:
    hu: np.ndarray
    inner: np.ndarray
    """Intracranial space (inside the inner table)."""
    ventricles: np.ndarray
    cy: float
    cx: float
    ry: float
    rx: float
    angle: float


def head(rng: np.random.Generator, size: int) -> Head:
    """A normal head slice in HU: skull, brain with grey/white texture, CSF ventricles."""
    shape = (size, size)
    cy, cx = size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3)
    ry, rx = size * rng.uniform(0.38, 0.44), size * rng.uniform(0.31, 0.37)
    angle, thick = rng.uniform(-0.25, 0.25), rng.uniform(2.5, 4.0)
    outer = _ellipse(shape, cy, cx, ry, rx, angle)
    inner = _ellipse(shape, cy, cx, ry - thick, rx - thick, angle)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[outer] = rng.uniform(700, 1000)
    hu[inner] = rng.uniform(28, 38) + _smooth_noise(rng, size, 3.0)[inner]
    ventricles = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        vy, vx = cy + rng.uniform(-2, 2), cx + side * size * rng.uniform(0.05, 0.08)
        ventricles |= _ellipse(shape, vy, vx, size * rng.uniform(0.09, 0.12), size * 0.035,
                               angle) & inner
    hu[ventricles] = rng.uniform(2, 10)
    return Head(hu, inner, ventricles, cy, cx, ry - thick, rx - thick, angle)


def head_with_bleeds(rng: np.random.Generator, size: int, labels: tuple[str, ...]
                     ) -> np.ndarray:
    h = head(rng, size)
    for label in labels:
        DRAW[label](rng, h)
    h.hu += rng.normal(0.0, rng.uniform(3.0, 5.0), h.hu.shape).astype(np.float32)
    return h.hu


def _rim_point(rng: np.random.Generator, h: Head, inset: float) -> tuple[float, float, float]:
    """A point ``inset`` px inside the inner table, at a random angle (returned too)."""
    t = rng.uniform(0, 2 * np.pi)
    return (h.cy + (h.ry - inset) * np.sin(t), h.cx + (h.rx - inset) * np.cos(t), t)


def _blood(rng: np.random.Generator) -> float:
    return float(rng.uniform(*BLOOD_HU))


def epidural(rng: np.random.Generator, h: Head) -> None:
    """Biconvex lens against the inner table (it does not cross sutures: short, thick)."""
    size = h.hu.shape[0]
    y, x, t = _rim_point(rng, h, size * 0.03)
    lens = _ellipse(h.hu.shape, y, x, size * 0.045, size * 0.12, t + np.pi / 2)
    h.hu[lens & h.inner] = _blood(rng)


def subdural(rng: np.random.Generator, h: Head) -> None:
    """Crescent along the inner table over one convexity (crosses sutures: long, thin)."""
    size = h.hu.shape[0]
    t0 = rng.uniform(0, 2 * np.pi)
    shrunk = _ellipse(h.hu.shape, h.cy, h.cx, h.ry - size * 0.035, h.rx - size * 0.035,
                      h.angle)
    yy, xx = np.mgrid[0:size, 0:size]
    theta = np.arctan2(yy - h.cy, xx - h.cx)
    sector = np.abs(np.angle(np.exp(1j * (theta - t0)))) < rng.uniform(0.6, 1.0)
    h.hu[h.inner & ~shrunk & sector] = _blood(rng)


def subarachnoid(rng: np.random.Generator, h: Head) -> None:
    """Thin hyperdense lines: blood in the sulci near the cortex and a basal-cistern star."""
    size = h.hu.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(int(rng.integers(3, 6))):
        y, x, t = _rim_point(rng, h, size * rng.uniform(0.05, 0.09))
        line = np.abs((yy - y) * np.cos(t) - (xx - x) * np.sin(t)) < 0.8
        near = (yy - y) ** 2 + (xx - x) ** 2 < (size * 0.06) ** 2
        h.hu[line & near & h.inner] = _blood(rng) - 5
    for k in range(3):  # basal cisterns: a small star at the centre
        t = k * np.pi / 3 + rng.uniform(-0.2, 0.2)
        arm = np.abs((yy - h.cy) * np.cos(t) - (xx - h.cx) * np.sin(t)) < 0.8
        h.hu[arm & ((yy - h.cy) ** 2 + (xx - h.cx) ** 2 < (size * 0.07) ** 2) & h.inner
             & ~h.ventricles] = _blood(rng) - 5


def intraventricular(rng: np.random.Generator, h: Head) -> None:
    """Blood layering in the dependent (posterior, lower in the image) part of a ventricle."""
    ys, _ = np.nonzero(h.ventricles)
    if ys.size == 0:
        return
    level = np.percentile(ys, rng.uniform(35, 60))
    yy = np.arange(h.hu.shape[0])[:, None]
    h.hu[h.ventricles & (yy >= level)] = _blood(rng)


def intraparenchymal(rng: np.random.Generator, h: Head) -> None:
    """A rounded clot deep in the brain with a darker rim of oedema."""
    size = h.hu.shape[0]
    deep = _erode(h.inner, max(4, size // 10)) & ~h.ventricles
    ys, xs = np.nonzero(deep)
    k = int(rng.integers(len(ys)))
    r = size * rng.uniform(0.04, 0.07)
    edema = _ellipse(h.hu.shape, float(ys[k]), float(xs[k]), r * 1.5, r * 1.3)
    clot = _ellipse(h.hu.shape, float(ys[k]), float(xs[k]), r, r * rng.uniform(0.7, 1.2),
                    rng.uniform(0, np.pi))
    h.hu[edema & h.inner & ~h.ventricles] = rng.uniform(14, 22)
    h.hu[clot & h.inner] = _blood(rng)


DRAW = {"epidural": epidural, "subdural": subdural, "subarachnoid": subarachnoid,
        "intraventricular": intraventricular, "intraparenchymal": intraparenchymal}
