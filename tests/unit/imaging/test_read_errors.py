"""Untrusted images: every bad file is a CaseReadError naming it, never a crash."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image

from imaging.reader import CaseReadError, read_image
from radtrain.synthetic.ct import generate_dicom_dataset


@pytest.fixture(scope="module")
def dicom_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dcm")
    case = generate_dicom_dataset(out, n_cases=1, seed=3, size=48)[0]
    return out / case.file


def test_synthetic_ct_reads_in_hounsfield_units(dicom_file: Path) -> None:
    img = read_image(dicom_file)
    assert img.pixels.shape == (48, 48) and img.pixels.dtype == np.float32
    assert img.modality == "CT" and img.photometric == "MONOCHROME2"
    assert img.pixels.min() < -900  # air, after RescaleIntercept -1024
    assert 0 < np.median(img.pixels[20:28, 20:28]) < 60  # brain tissue


def test_truncated_dicom_names_the_file(dicom_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "truncated.dcm"
    bad.write_bytes(dicom_file.read_bytes()[:-1500])
    with pytest.raises(CaseReadError, match=r"truncated\.dcm"):
        read_image(bad)


def test_header_only_dicom_is_a_case_error(dicom_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(dicom_file.read_bytes()[:200])
    with pytest.raises(CaseReadError, match=r"cut\.dcm"):
        read_image(bad)


def test_non_image_file(tmp_path: Path) -> None:
    bad = tmp_path / "notes.dcm"
    bad.write_text("patient said hello\n" * 20)
    with pytest.raises(CaseReadError, match=r"notes\.dcm: not a DICOM, PNG or JPEG image"):
        read_image(bad)


def test_empty_file(tmp_path: Path) -> None:
    bad = tmp_path / "empty.dcm"
    bad.write_bytes(b"")
    with pytest.raises(CaseReadError, match="empty"):
        read_image(bad)


def test_missing_pixel_data(dicom_file: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_file)
    del ds.PixelData
    bad = tmp_path / "nopixels.dcm"
    ds.save_as(bad)
    with pytest.raises(CaseReadError, match=r"nopixels\.dcm.*PixelData missing"):
        read_image(bad)


def test_size_limits_apply_before_decoding(dicom_file: Path, tmp_path: Path) -> None:
    with pytest.raises(CaseReadError, match="limit"):
        read_image(dicom_file, max_bytes=1000)
    ds = pydicom.dcmread(dicom_file)
    ds.Rows = ds.Columns = 60000  # a header that promises 7 GB of pixels
    bomb = tmp_path / "bomb.dcm"
    ds.save_as(bomb)
    with pytest.raises(CaseReadError, match="decoded image would be"):
        read_image(bomb)


def test_source_label_is_used_in_messages(tmp_path: Path) -> None:
    bad = tmp_path / "x.img"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(CaseReadError) as info:
        read_image(bad, source="case_0007 (cases/a.dcm)")
    assert info.value.source == "case_0007 (cases/a.dcm)"
    assert info.value.code == "case_unreadable"


def test_png_and_jpeg(tmp_path: Path) -> None:
    gray = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) % 256
    Image.fromarray(gray.astype(np.uint8)).save(tmp_path / "g.png")
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "c.jpg")
    g = read_image(tmp_path / "g.png")
    assert g.pixels.shape == (48, 64) and g.photometric == "MONOCHROME2"
    c = read_image(tmp_path / "c.jpg")
    assert c.pixels.shape == (20, 30, 3) and c.photometric == "RGB"


def test_corrupt_png_names_the_file(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "ok.png")
    bad = tmp_path / "broken.png"
    bad.write_bytes((tmp_path / "ok.png").read_bytes()[:2000])
    with pytest.raises(CaseReadError, match=r"broken\.png"):
        read_image(bad)


@pytest.mark.filterwarnings("ignore")  # pydicom warns about every oddity in its corpus
def test_pydicom_test_files_read_or_fail_cleanly() -> None:
    """pydicom's own corpus (odd syntaxes, no pixels, truncations, non-DICOM files)."""
    files = [Path(f) for f in pydicom.data.get_testdata_files()]
    assert len(files) > 50
    started, ok = time.monotonic(), 0
    for path in files:
        try:
            img = read_image(path)
        except CaseReadError as exc:
            assert path.name in str(exc)
            continue
        assert img.pixels.dtype == np.float32 and img.pixels.ndim in (2, 3), path.name
        assert np.isfinite(img.pixels).all(), path.name
        ok += 1
    assert ok > 20
    assert time.monotonic() - started < 20
