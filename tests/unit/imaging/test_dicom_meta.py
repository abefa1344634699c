"""The transfer syntax from a file's first bytes (imaging/dicom_meta.py): a conformant
file meta answers at once; anything it cannot be sure of goes to pydicom's parser."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from imaging.budget import is_deflated
from imaging.dicom_meta import HEAD_BYTES, meta_syntax, surely_not_deflated
from imaging.reader import read_image
from tests.support.hostile import deflated_dicom
from tests.support.series_data import ct_dataset, save

DEFLATED = str(DeflatedExplicitVRLittleEndian).encode()


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN"):
        return struct.pack("<HH2sHI", 2, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def _head(*elements: bytes) -> bytes:
    return b"\0" * 128 + b"DICM" + b"".join(elements) + struct.pack("<HH", 8, 0x16)


def test_a_conformant_file_meta_is_read_from_the_head(tmp_path: Path) -> None:
    path = save(ct_dataset(np.zeros((8, 8), np.float32)), tmp_path / "a.dcm")
    head = path.read_bytes()[:HEAD_BYTES]
    assert meta_syntax(head) == str(ExplicitVRLittleEndian).encode()
    assert surely_not_deflated(head) and not is_deflated(path)
    assert read_image(path).pixels.shape == (8, 8)


def test_a_deflated_file_is_never_taken_for_a_plain_one(tmp_path: Path) -> None:
    path = deflated_dicom(tmp_path / "d.dcm", side=64)
    head = path.read_bytes()[:HEAD_BYTES]
    assert meta_syntax(head) == DEFLATED and not surely_not_deflated(head)
    assert is_deflated(path)


@pytest.mark.parametrize("head", [
    # the syntax after an element that runs past the bytes read: cannot tell
    _head(_element(1, b"OB", b"\0" * HEAD_BYTES), _element(0x10, b"UI", DEFLATED)),
    # implicit VR file meta (not conformant; pydicom reads it): cannot tell
    b"\0" * 128 + b"DICM" + struct.pack("<HHI", 2, 0x10, len(DEFLATED)) + DEFLATED,
    # no preamble
    _element(0x10, b"UI", DEFLATED),
], ids=["long-element", "implicit-vr", "no-preamble"])
def test_what_it_cannot_be_sure_of_goes_to_pydicom(head: bytes) -> None:
    assert meta_syntax(head[:HEAD_BYTES]) is None
    assert not surely_not_deflated(head[:HEAD_BYTES])


def test_the_last_syntax_element_wins_as_in_pydicom() -> None:
    head = _head(_element(0x10, b"UI", b"1.2.840.10008.1.2.1\0"), _element(0x10, b"UI", DEFLATED))
    assert meta_syntax(head) == DEFLATED
    assert meta_syntax(_head(_element(2, b"UI", b"1.2.3\0"))) == b""  # names none
