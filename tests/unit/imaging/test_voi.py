"""``auto`` windowing: the file's VOI LUT function and VOI LUT sequence, applied through
pydicom (imaging/windows.py auto_pixels), on files with known values built here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from imaging.preview import render_files
from imaging.reader import read_image
from imaging.windows import REGION_WINDOWS, auto_pixels, region_choices, windows_for
from tests.support.dataset_utils import write_dicom

RAMP = np.array([[-1.0, 0.0, 20.0, 40.0, 60.0, 79.0, 80.0, 200.0]], dtype=np.float32)


def ct_with(tmp_path: Path, name: str, **attrs: object) -> Path:
    path = write_dicom(tmp_path / f"{name}.dcm", RAMP, window=(40.0, 81.0))
    ds = pydicom.dcmread(path)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path


def auto(path: Path) -> np.ndarray:
    out = auto_pixels(path, read_image(path))
    assert out is not None
    return out[0]


def test_linear_uses_dicoms_minus_half_offsets(tmp_path: Path) -> None:
    # PS3.3 C.11.2.1.2.1: (x - (c - 0.5)) / (w - 1) + 0.5, clipped; c = 40, w = 81
    got = auto(ct_with(tmp_path, "linear"))
    want = [0.0, 0.00625, 0.25625, 0.50625, 0.75625, 0.99375, 1.0, 1.0]
    assert got == pytest.approx(want, abs=1e-6)


def test_linear_exact(tmp_path: Path) -> None:
    # C.11.2.1.3.2: (x - c) / w + 0.5; c = 40, w = 80
    path = ct_with(tmp_path, "exact", VOILUTFunction="LINEAR_EXACT", WindowWidth=80.0)
    want = [0.0, 0.0, 0.25, 0.5, 0.75, 0.9875, 1.0, 1.0]
    assert auto(path) == pytest.approx(want, abs=1e-6)


def test_sigmoid(tmp_path: Path) -> None:
    # C.11.2.1.3.1: 1 / (1 + exp(-4 (x - c) / w)); c = 40, w = 80
    path = ct_with(tmp_path, "sigmoid", VOILUTFunction="SIGMOID", WindowWidth=80.0)
    want = [1 / (1 + math.exp(-4 * (x - 40) / 80)) for x in RAMP[0]]
    assert auto(path) == pytest.approx(want, abs=1e-6)
    assert auto(path)[3] == pytest.approx(0.5)


def test_the_first_of_several_windows(tmp_path: Path) -> None:
    path = ct_with(tmp_path, "multi", VOILUTFunction="LINEAR_EXACT",
                   WindowCenter=[40.0, 500.0], WindowWidth=[80.0, 2000.0])
    assert auto(path)[3] == pytest.approx(0.5)


def voi_lut_file(tmp_path: Path, *, with_window: bool) -> Path:
    """MR (unsigned stored values 0..5, no rescale) with a 4-entry 8-bit VOI LUT from 1."""
    values = np.array([[0, 1, 2, 3, 4, 5]], dtype=np.float32)
    path = write_dicom(tmp_path / f"lut{with_window}.dcm", values, modality="MR",
                       window=(100.0, 10.0) if with_window else None)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 1, 8])  # LUTDescriptor: entries, first mapped, bits
    item.add_new(0x00283006, "US", [0, 51, 153, 255])  # LUTData
    ds.VOILUTSequence = DicomSequence([item])
    ds.save_as(path)
    return path


@pytest.mark.parametrize("with_window", [False, True])
def test_voi_lut_sequence_wins_over_the_window(tmp_path: Path, with_window: bool) -> None:
    # below the first mapped value: entry 0; then the table; above: the last entry
    want = np.array([0, 0, 51, 153, 255, 255]) / 255.0
    assert auto(voi_lut_file(tmp_path, with_window=with_window)) == pytest.approx(want)


def test_a_file_without_voi_has_no_auto_pixels(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "plain.dcm", RAMP)
    assert auto_pixels(path, read_image(path)) is None


def test_the_preview_applies_the_sigmoid(tmp_path: Path) -> None:
    from PIL import Image

    path = write_dicom(tmp_path / "flat.dcm", np.full((8, 8), 60.0, np.float32),
                       window=(40.0, 80.0))
    ds = pydicom.dcmread(path)
    ds.VOILUTFunction = "SIGMOID"
    ds.save_as(path)
    import io

    arr = np.asarray(Image.open(io.BytesIO(render_files(path, size=32))).convert("L"))
    assert arr.mean() == pytest.approx(255 / (1 + math.exp(-1)), abs=1.5)


def test_region_windows_and_no_default_for_an_unknown_body_part() -> None:
    assert [w.name for w in REGION_WINDOWS["head"]] == ["brain", "subdural", "bone"]
    assert windows_for(None) is None and windows_for("pelvis") is None
    assert "chest: mediastinal, lung, bone" in region_choices()
