"""Small datasets the dataset tests build on disk: DICOMs with known HU, PNGs, labels files."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

SOP_CLASSES = {"CT": CTImageStorage, "DX": DigitalXRayImageStorageForPresentation,
               "CR": DigitalXRayImageStorageForPresentation, "MR": MRImageStorage}


def write_dicom(path: Path, values: np.ndarray, *, modality: str = "CT", patient: str = "P1",
                slope: float = 1.0, intercept: float = -1024.0,
                window: tuple[float, float] | None = None,
                photometric: str = "MONOCHROME2") -> Path:
    """A valid uncompressed DICOM. For CT ``values`` are HU (stored = (HU - intercept) / slope);
    for other modalities they are the stored values themselves."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASSES.get(modality, CTImageStorage)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = patient, modality
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    if modality == "CT":
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        stored = np.round((values - intercept) / slope).astype(np.int16)
    else:
        ds.PixelRepresentation = 0
        stored = values.astype(np.uint16)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ct(path: Path, size: int = 16, hu: float = 40.0, patient: str = "P1",
       modality: str = "CT") -> Path:
    return write_dicom(path, np.full((size, size), hu, dtype=np.float32), modality=modality,
                       patient=patient)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_json(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def mask_to_relative_rle(mask: np.ndarray) -> str:
    """SIIM's relative run-length form (column-major, starts after the previous run)."""
    flat = np.concatenate([[0], (mask.T.flatten() > 0).astype(np.int8), [0]])
    changes = np.flatnonzero(flat[1:] != flat[:-1])
    starts, ends = changes[0::2], changes[1::2]
    out, prev_end = [], 0
    for s, e in zip(starts, ends, strict=True):
        out += [int(s - prev_end), int(e - s)]
        prev_end = e
    return " ".join(map(str, out)) if out else "-1"


def mask_to_absolute_rle(mask: np.ndarray) -> str:
    flat = np.concatenate([[0], (mask.T.flatten() > 0).astype(np.int8), [0]])
    changes = np.flatnonzero(flat[1:] != flat[:-1])
    runs = changes.copy()
    runs[1::2] -= runs[0::2]
    runs[0::2] += 1
    return " ".join(map(str, runs)) if runs.size else "-1"


def classification_folder(root: Path, n: int = 6) -> Path:
    """``images/`` of n small CT DICOMs + ``labels.csv`` (image,label), two patients each."""
    rows = []
    for i in range(n):
        label = "finding" if i % 2 else "normal"
        ct(root / "images" / f"c{i}.dcm", hu=60.0 if i % 2 else 30.0, patient=f"P{i // 2}")
        rows.append([f"images/c{i}.dcm", label])
    write_csv(root / "labels.csv", ["image", "label"], rows)
    return root


class MemoryDatasetRepo:
    """The dataset registry an import writes to, in memory (``import_dataset``'s repo)."""

    def __init__(self) -> None:
        self.saved: dict[str, Any] = {}

    async def get(self, dataset_id: str) -> Any:
        return self.saved.get(dataset_id)

    async def put(self, summary: Any) -> None:
        self.saved[summary.id] = summary
