"""DICOM series built by the tests (issue 15): slices with geometry, multi-frame images,
and a small RSNA STR pulmonary-embolism layout (train.csv + train/<study>/<series>/)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def ct_dataset(hu: np.ndarray, *, patient: str | None = "P1", study: str | None = None,
               series: str | None = None, sop: str | None = None,
               instance: int | None = None, position: Sequence[float] | None = None,
               orientation: Sequence[float] | None = AXIAL, **extra: Any) -> Dataset:
    """A CT dataset in HU (stored = HU + 1024); ``hu`` (F, H, W) makes a multi-frame image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    if patient is not None:
        ds.PatientID = patient
    ds.Modality = "CT"
    if instance is not None:
        ds.InstanceNumber = instance
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    for key, value in extra.items():
        setattr(ds, key, value)
    arr = np.asarray(hu, dtype=np.float32)
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = np.round(arr + 1024).astype(np.int16).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def per_frame_positions(ds: Dataset, positions: Sequence[Sequence[float]]) -> Dataset:
    """Enhanced-CT style: orientation in the shared group, a position per frame."""
    shared, plane = Dataset(), Dataset()
    plane.ImageOrientationPatient = list(ds.ImageOrientationPatient)
    shared.PlaneOrientationSequence = DicomSequence([plane])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    del ds.ImageOrientationPatient
    items = []
    for pos in positions:
        item, pp = Dataset(), Dataset()
        pp.ImagePositionPatient = [float(v) for v in pos]
        item.PlanePositionSequence = DicomSequence([pp])
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(items)
    return ds


# --- the RSNA STR PE layout ----------------------------------------------------------

EXAM_COLUMNS = ("negative_exam_for_pe", "qa_motion", "qa_contrast", "flow_artifact",
                "rv_lv_ratio_gte_1", "rv_lv_ratio_lt_1", "leftsided_pe", "chronic_pe",
                "true_filling_defect_not_pe", "rightsided_pe", "acute_and_chronic_pe",
                "central_pe", "indeterminate")
"""In the order of the challenge's train.csv, after the UIDs and pe_present_on_image."""


@dataclass
class PeExam:
    slices: list[int]
    """pe_present_on_image of each slice, in anatomical (position) order."""
    labels: dict[str, int] = field(default_factory=dict)
    """Exam-level labels set to 1 (the rest are 0)."""
    study: str = field(default_factory=generate_uid)
    series: str = field(default_factory=generate_uid)
    sops: list[str] = field(default_factory=list)


def write_pe_dataset(root: Path, exams: list[PeExam], size: int = 16,
                     seed: int = 0) -> Path:
    """Slices whose HU carry the label (a bright clot-like blob on positive slices),
    written under shuffled file order and reversed InstanceNumbers, and train.csv."""
    rng = np.random.default_rng(seed)
    rows = []
    for e, exam in enumerate(exams):
        n = len(exam.slices)
        exam.sops = [generate_uid() for _ in range(n)]
        for k in rng.permutation(n):
            hu = rng.normal(40, 5, (size, size)).astype(np.float32)
            if exam.slices[k]:
                hu[4:9, 4:9] = 200.0
            ds = ct_dataset(hu, patient=f"PE{e}", study=exam.study, series=exam.series,
                            sop=exam.sops[k], instance=n - k, position=(0, 0, -300 + 5 * k),
                            BodyPartExamined="CHEST")
            save(ds, root / "train" / exam.study / exam.series / f"{exam.sops[k]}.dcm")
            cells = [int(exam.labels.get(c, 0)) for c in EXAM_COLUMNS]
            rows.append([exam.study, exam.series, exam.sops[k], exam.slices[k], *cells])
    with open(root / "train.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                         "pe_present_on_image", *EXAM_COLUMNS])
        writer.writerows(rows)
    return root
