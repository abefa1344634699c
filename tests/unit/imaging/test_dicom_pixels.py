"""imaging/dicom_pixels.py: the plain native frame read from its bytes is pydicom's own
array, bit for bit and dtype for dtype; everything else is left to pydicom."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pixel_array
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from imaging import reader
from imaging.dicom_pixels import pixel_values, plain_file, plain_native, rescaled
from imaging.reader import CaseReadError, read_image
from imaging.transforms import ImageArray


def _dataset(bits: int, stored: int, signed: int, raw: bytes, rows: int = 5, cols: int = 7,
             syntax: str = ExplicitVRLittleEndian, photometric: str = "MONOCHROME2"
             ) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    ds.PixelRepresentation, ds.PhotometricInterpretation = signed, photometric
    ds.PixelData = raw
    return ds


@pytest.mark.parametrize("bits", [8, 16, 32])
@pytest.mark.parametrize("signed", [0, 1])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_the_plain_frame_is_pydicoms_array(bits: int, signed: int, syntax: str) -> None:
    rng = np.random.default_rng(bits + signed)
    for stored in sorted({1, bits // 2 + 1, bits - 3, bits}):
        for rows, cols in ((5, 7), (3, 3), (64, 33)):
            n = rows * cols * bits // 8
            raw = rng.integers(0, 256, n, dtype=np.uint8).tobytes()  # unused bits set too
            for data in (raw, raw + b"\0" if n % 2 else raw):
                ds = _dataset(bits, stored, signed, data, rows, cols, syntax)
                ours, theirs = plain_native(ds), pixel_array(ds)
                assert ours is not None, (bits, stored, rows, cols)
                assert ours.dtype == theirs.dtype and ours.flags.writeable
                np.testing.assert_array_equal(ours, theirs)


def test_anything_less_plain_is_left_to_pydicom() -> None:
    raw = bytes(range(70))
    assert plain_native(_dataset(16, 12, 1, raw)) is not None
    others = {
        "big endian": _dataset(16, 12, 1, raw, syntax=ExplicitVRBigEndian),
        "compressed": _dataset(16, 12, 1, raw, syntax=RLELossless),
        "short": _dataset(16, 12, 1, raw[:-2]),
        "excess": _dataset(16, 12, 1, raw + b"\0\0"),
        "colour": _dataset(16, 12, 1, raw, photometric="RGB"),
        "bits stored over allocated": _dataset(16, 17, 1, raw),
        "one bit": _dataset(1, 1, 0, raw),
    }
    frames = _dataset(16, 12, 1, raw)
    frames.NumberOfFrames = 2
    others["frames"] = frames
    no_meta = _dataset(16, 12, 1, raw)
    del no_meta.file_meta
    others["no file meta"] = no_meta
    for why, ds in others.items():
        assert plain_native(ds) is None, why
    with pytest.raises(ValueError, match="less than expected"):
        pixel_values(others["short"])  # pydicom's own error, as before


def test_every_plain_file_of_pydicoms_corpus_reads_as_pydicom_reads_it() -> None:
    plain = 0
    for name in sorted(get_testdata_files()):
        path = Path(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, force=True)
                theirs = pixel_array(ds)
            except Exception:
                continue
            ours = plain_native(ds)
        if ours is not None:
            plain += 1
            assert ours.dtype == theirs.dtype, path.name
            np.testing.assert_array_equal(ours, theirs, err_msg=path.name)
    assert plain >= 5


def test_the_stored_values_rescale_to_the_pixels(tmp_path: Path) -> None:
    from radtrain.synthetic.ct import generate_dicom_dataset

    case = generate_dicom_dataset(tmp_path, n_cases=1, seed=1, size=48)[0]
    image = read_image(tmp_path / case.file)
    assert image.stored is not None and np.issubdtype(image.stored.values.dtype, np.integer)
    np.testing.assert_array_equal(image.stored.physical(image.stored.values), image.pixels)
    ds = _dataset(16, 16, 0, np.arange(35, dtype="<u2").tobytes())
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-3"
    hu, stored = rescaled(pixel_values(ds), ds)
    assert stored is not None and hu.dtype == np.float32
    np.testing.assert_array_equal(hu, np.arange(35, dtype=np.float32).reshape(5, 7) * 0.5 - 3)


def _read_both(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """read_image's result (or error text) with the plain path, then through pydicom."""
    results: list[Any] = []
    for plain in (True, False):
        with monkeypatch.context() as m, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not plain:
                m.setattr(reader, "plain_file", lambda *args: None)
            try:
                results.append(read_image(path))
            except CaseReadError as exc:
                results.append(exc.message)
    return results[0], results[1]


def test_a_plain_file_reads_as_pydicom_reads_it(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from radtrain.synthetic.ct import generate_dicom_dataset

    files = [tmp_path / c.file for c in generate_dicom_dataset(tmp_path, 4, seed=2, size=40)]
    files += [Path(f) for f in sorted(get_testdata_files()) if Path(f).is_file()]
    plain = 0
    for path in files:
        head = path.read_bytes()[:4096]
        if plain_file(path, head, path.stat().st_size) is not None:
            plain += 1
        ours, theirs = _read_both(path, monkeypatch)
        if isinstance(theirs, str):
            assert ours == theirs, path.name
            continue
        assert isinstance(ours, ImageArray), path.name
        assert (ours.modality, ours.photometric) == (theirs.modality, theirs.photometric)
        assert ours.pixels.dtype == theirs.pixels.dtype, path.name
        np.testing.assert_array_equal(ours.pixels, theirs.pixels, err_msg=path.name)
        if theirs.stored is not None:
            assert ours.stored is not None
            assert ours.stored.values.dtype == theirs.stored.values.dtype
            np.testing.assert_array_equal(ours.stored.values, theirs.stored.values)
    assert plain >= 8  # the synthetic CTs and the corpus's plain files


def test_a_plain_file_that_changed_since_its_scan_is_parsed_anew(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from radtrain.synthetic.ct import generate_dicom_dataset

    path = tmp_path / generate_dicom_dataset(tmp_path, 1, seed=2, size=40)[0].file
    data = path.read_bytes()
    scanned = plain_file(path, data[:4096], len(data))
    assert scanned is not None
    path.write_bytes(data[:-100])  # truncated after the scan
    assert scanned.decode() is None
    with pytest.raises(CaseReadError, match=r"truncated|less than expected") as info:
        read_image(path)
    assert info.value.kind == "truncated"
