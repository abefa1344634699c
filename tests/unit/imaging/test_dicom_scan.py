"""imaging/dicom_scan.py and dicom_values.py: ``read_header``'s quick path reads exactly
what pydicom's path reads, header for header and error for error, or leaves the file to it.

Each check runs ``read_header`` twice, once as it runs and once with the scan turned
off (every file through ``dcmread``), over pydicom's own test corpus, files of
tricky values, and truncated and corrupted copies of the files the scan accepts.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from imaging import dicom_scan, header, reader
from imaging.budget import DecodeBudget
from imaging.dicom_values import VALUE_TAGS, HeaderValues

CORPUS = sorted(Path(f) for f in get_testdata_files() if Path(f).is_file())


def _read(path: Path, budget: DecodeBudget | None = None) -> Any:
    """The header, or the error (kind and message) it raises."""
    try:
        return reader.read_header(path, source=path.name, max_bytes=50_000_000, budget=budget)
    except reader.CaseReadError as exc:
        return ("error", exc.kind, exc.message)


def _both(path: Path, monkeypatch: pytest.MonkeyPatch,
          budget: DecodeBudget | None = None) -> tuple[Any, Any]:
    quick = _read(path, budget)
    with monkeypatch.context() as m:
        m.setattr(header, "scan", lambda *args: None)
        slow = _read(path, budget)
    return quick, slow


def _scanned(path: Path) -> bool:
    data = path.read_bytes()
    found = dicom_scan.scan(path, data[:4096], len(data), VALUE_TAGS, 4096)
    return found is not None


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the odd files on purpose
        yield


def test_the_corpus_reads_the_same_and_plain_files_take_the_quick_path(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    for path in CORPUS:
        quick, slow = _both(path, monkeypatch)
        assert quick == slow, path.name
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm"):
        assert _scanned(Path(str(get_testdata_file(name)))), name
    for name in ("MR_small_bigendian.dcm", "JPEG2000.dcm", "image_dfl.dcm", "no_meta.dcm"):
        assert not _scanned(Path(str(get_testdata_file(name)))), name


def _mutants(data: bytes, rng: random.Random) -> list[bytes]:
    """Truncations (everywhere, and near the end), byte changes, trailing bytes."""
    cuts = {rng.randrange(132, len(data)) for _ in range(12)} | {len(data) - 1, 140, 300}
    out = [data[:cut] for cut in sorted(cuts)]
    for _ in range(24):
        changed = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 4))):
            changed[rng.randrange(128, min(len(data), 2048))] = rng.randrange(256)
        out.append(bytes(changed))
    out += [data + bytes(rng.randrange(256) for _ in range(n)) for n in (1, 7, 8, 12, 30)]
    return out


def test_truncated_and_corrupted_files_read_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(16)
    plain = [p for p in CORPUS if _scanned(p)][:24]
    assert len(plain) >= 10
    quick_paths = 0
    for source in plain:
        for i, data in enumerate(_mutants(source.read_bytes(), rng)):
            path = tmp_path / f"{source.stem}-{i}.dcm"
            path.write_bytes(data)
            quick_paths += _scanned(path)
            quick, slow = _both(path, monkeypatch)
            assert quick == slow, (source.name, i)
    assert quick_paths > 200  # the quick path did answer for many of them


def test_refusals_are_pydicoms_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "big.dcm", lambda ds: None, size=64)
    small = DecodeBudget(request_bytes=1000, process_bytes=1 << 20)
    quick, slow = _both(path, monkeypatch, small)
    assert quick == slow and quick[:2] == ("error", "too_large")
    short = tmp_path / "short.dcm"
    short.write_bytes(path.read_bytes()[:-100])  # native pixels cut short
    quick, slow = _both(short, monkeypatch)
    assert quick == slow and quick[:2] == ("error", "truncated")


def _write(path: Path, edit: Callable[[Dataset], None], *, size: int = 8,
           syntax: UID = ExplicitVRLittleEndian) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality, ds.Rows, ds.Columns = "P1", "CT", size, size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    ds.InstanceNumber, ds.ImagePositionPatient = 3, [0, 0, 1.5]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelData = np.zeros((size, size), np.int16).tobytes()
    edit(ds)
    little = syntax != ExplicitVRBigEndian
    ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=little,
               enforce_file_format=True)
    return path


def _raw(keyword: str, value: bytes, vr: str | None = None) -> Callable[[Dataset], None]:
    """Set an element's encoded value as is (a raw element is written unchecked)."""
    def edit(ds: Dataset) -> None:
        tag = Tag(keyword)
        ds._dict[tag] = RawDataElement(tag, vr or dictionary_VR(tag), len(value), value, 0,
                                       False, True)
    return edit


TRICKY: dict[str, Callable[[Dataset], None]] = {
    "plain": lambda ds: None,
    "is_float": _raw("InstanceNumber", b"1.0 "),
    "is_padded": _raw("InstanceNumber", b" 12 "),
    "is_signed": _raw("InstanceNumber", b"+5"),
    "is_junk": _raw("InstanceNumber", b"1a"),
    "is_empty": _raw("InstanceNumber", b"  "),
    "frames_zero": _raw("NumberOfFrames", b"0 "),
    "ds_exponent": _raw("WindowCenter", b"1e2\\-3.5"),
    "ds_spaces": _raw("WindowWidth", b" 400 "),
    "ds_null": _raw("WindowWidth", b"400\x00"),
    "ds_junk": _raw("WindowWidth", b"4O0 "),
    "ds_inf": _raw("WindowCenter", b"inf "),
    "ds_empty_item": _raw("ImagePositionPatient", b"1\\\\3 "),
    "ds_two_of_three": _raw("ImagePositionPatient", b"1\\2 "),
    "lo_multi": _raw("PatientID", b"A\\B "),
    "lo_latin1": _raw("PatientID", "Jos\u00e9".encode("latin-1")),
    "lo_escape": _raw("PatientID", b"\x1b$B"),
    "lo_null": _raw("PatientID", b"P7\x00"),
    "lo_leading_space": _raw("PatientID", b" P8 "),
    "cs_lower": _raw("Modality", b"ct"),
    "cs_multi": _raw("PhotometricInterpretation", b"MONOCHROME2\\RGB "),
    "ui_padded": _raw("StudyInstanceUID", b"1.2.3\x00"),
    "us_odd": _raw("Rows", b"\x08\x00\x00\x00"),
    "us_as_un": _raw("Columns", b"\x08\x00", "UN"),
    "us_empty": _raw("SamplesPerPixel", b""),
    "text_empty": _raw("BodyPartExamined", b""),
    "long_description": _raw("StudyDescription", b"x" * 5000),
    "charset": lambda ds: setattr(ds, "SpecificCharacterSet", "ISO_IR 100"),
    "sequence": lambda ds: setattr(ds, "ReferencedImageSequence", [Dataset()]),
    "trailing_padding": lambda ds: ds.__setitem__(
        0xFFFCFFFC, pydicom.DataElement(0xFFFCFFFC, "OB", b"\x00" * 10)),
}


@pytest.mark.parametrize("name", sorted(TRICKY))
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    ExplicitVRBigEndian])
def test_tricky_values_read_the_same(name: str, syntax: UID, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if syntax == ExplicitVRBigEndian and name in ("us_odd", "us_as_un", "ds_null"):
        pytest.skip("raw little-endian bytes")
    path = _write(tmp_path / f"{name}.dcm", TRICKY[name], syntax=syntax, size=40)
    quick, slow = _both(path, monkeypatch)
    assert quick == slow
    if name == "plain" and syntax != ExplicitVRBigEndian:
        assert _scanned(path) and not isinstance(quick, tuple)


def test_values_decoded_from_raw_bytes_are_pydicoms(tmp_path: Path) -> None:
    for name, edit in sorted(TRICKY.items()):
        ds = pydicom.dcmread(_write(tmp_path / f"{name}.dcm", edit), force=True,
                             defer_size=4096)
        fresh = pydicom.dcmread(tmp_path / f"{name}.dcm", force=True, defer_size=4096)
        values = HeaderValues.of(fresh)
        for tag in VALUE_TAGS:
            try:
                want = ds.get(tag)
                want = None if want is None else want.value
            except Exception as exc:  # pydicom cannot convert it: neither may we
                with pytest.raises(type(exc)):
                    values.value(tag)
                continue
            got = values.value(tag)
            if want in (None, ""):
                assert got in (None, ""), (name, hex(tag), got)
            else:
                assert got == want, (name, hex(tag), got, want)
