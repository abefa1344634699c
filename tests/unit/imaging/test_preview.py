"""Preview windows checked by pixel statistics on DICOMs with known HU values."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from imaging.preview import WINDOWS, colour, render_files, render_preview
from imaging.reader import read_header
from imaging.transforms import ImageArray
from schemas.dataset import Box
from tests.support.dataset_utils import write_dicom

AIR, BRAIN, BLEED, BONE = -1000.0, 40.0, 70.0, 1000.0


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64x64 CT in four vertical bands of known HU; slope 2 so rescaling is exercised."""
    hu = np.zeros((64, 64), np.float32)
    for i, value in enumerate((AIR, BRAIN, BLEED, BONE)):
        hu[:, i * 16:(i + 1) * 16] = value
    return write_dicom(tmp_path_factory.mktemp("ct") / "phantom.dcm", hu, slope=2.0,
                       intercept=-1024.0)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


def band(arr: np.ndarray, i: int) -> float:
    """Mean of a band's interior, away from resampling at its edges."""
    return float(arr[8:56, i * 16 + 4:(i + 1) * 16 - 4, 0].mean())


def expected(hu: float, center: float, width: float) -> float:
    return float(np.clip((hu - (center - width / 2)) / width, 0, 1) * 255)


@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_each_preset_maps_known_hu_as_its_window_says(phantom: Path, name: str) -> None:
    arr = pixels(render_files(phantom, window=name, size=64))
    center, width = WINDOWS[name]
    for i, hu in enumerate((AIR, BRAIN, BLEED, BONE)):
        assert band(arr, i) == pytest.approx(expected(hu, center, width), abs=1.0), (name, hu)
    assert np.all(arr[..., 0] == arr[..., 1])  # grey, no overlay


def test_brain_window_values(phantom: Path) -> None:
    arr = pixels(render_files(phantom, window="brain", size=64))
    assert band(arr, 0) == 0 and band(arr, 3) == 255
    assert band(arr, 1) == pytest.approx(128, abs=1)  # 40 HU is the centre of 40/80


def test_auto_uses_the_files_own_window_then_the_body_regions(tmp_path: Path) -> None:
    hu = np.full((32, 32), BRAIN, np.float32)
    own = write_dicom(tmp_path / "own.dcm", hu, window=(1000.0, 2000.0))
    assert band(pixels(render_files(own, size=64)), 1) == pytest.approx(
        expected(BRAIN, 1000, 2000), abs=1)
    plain = write_dicom(tmp_path / "plain.dcm", hu)
    assert read_header(plain).window_center is None
    # unknown body part: the soft-tissue window (50/400), never the brain window by default
    assert band(pixels(render_files(plain, size=64)), 1) == pytest.approx(
        expected(BRAIN, 50, 400), abs=1)
    ds = pydicom.dcmread(plain)
    ds.BodyPartExamined = "HEAD"
    ds.save_as(tmp_path / "head.dcm")
    assert band(pixels(render_files(tmp_path / "head.dcm", size=64)), 1) == pytest.approx(
        128, abs=1)


def test_non_ct_without_window_is_min_max(tmp_path: Path) -> None:
    values = np.tile(np.linspace(100, 900, 32, dtype=np.float32), (32, 1))
    arr = pixels(render_files(write_dicom(tmp_path / "mr.dcm", values, modality="MR"), size=32))
    assert arr[:, 0, 0].mean() == pytest.approx(0, abs=2)
    assert arr[:, -1, 0].mean() == pytest.approx(255, abs=2)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    values = np.zeros((32, 32), np.float32)
    values[:, 16:] = 4000
    mono1 = write_dicom(tmp_path / "m1.dcm", values, modality="DX", photometric="MONOCHROME1")
    mono2 = write_dicom(tmp_path / "m2.dcm", values, modality="DX")
    a1, a2 = pixels(render_files(mono1, size=32)), pixels(render_files(mono2, size=32))
    assert a2[:, :12, 0].mean() == 0 and a2[:, 20:, 0].mean() == 255
    assert a1[:, :12, 0].mean() == 255 and a1[:, 20:, 0].mean() == 0


def test_size_keeps_the_aspect_ratio(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "wide.dcm", np.zeros((20, 80), np.float32))
    assert Image.open(io.BytesIO(render_files(path, size=200))).size == (200, 50)
    with pytest.raises(ValueError, match="size"):
        render_files(path, size=4)
    with pytest.raises(ValueError, match="window"):
        render_files(path, window="kidney")


def test_boxes_and_masks_are_drawn_in_class_colours() -> None:
    image = ImageArray(pixels=np.zeros((64, 64), np.float32), modality="CT",
                       photometric="MONOCHROME2")
    box = Box(label="mass", x_min=10, y_min=10, x_max=30, y_max=40)
    arr = pixels(render_preview(image, window="brain", size=64, boxes=[box],
                                classes=["nodule", "mass"]))
    assert tuple(arr[20, 10]) == colour(1)  # left edge of the box
    assert tuple(arr[20, 20]) == (0, 0, 0)  # inside stays the image
    mask = np.zeros((64, 64), np.uint8)
    mask[40:60, 40:60] = 1
    arr = pixels(render_preview(image, window="brain", size=64, mask=mask, classes=["x"]))
    assert tuple(arr[50, 50]) == tuple(round(0.4 * c) for c in colour(0))  # tinted
    assert tuple(arr[40, 50]) == colour(0)  # outline
    assert tuple(arr[10, 10]) == (0, 0, 0)


def test_colour_images_keep_their_colours(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[0, 0] = (0, 0, 255)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    arr = pixels(render_files(path, window="bone", size=32))
    assert arr[16, 16, 0] > 150 and arr[16, 16, 2] == 0
