"""A parsed DICOM's pixel values: pydicom's decode, and the rescale to physical units.

``imaging.reader`` decodes through here. The common case of a training set, one
grayscale frame stored natively (uncompressed, little endian), is read straight from
the element's bytes the way pydicom's native decoder reads it: pydicom's
``pixel_array`` first gathers and validates a dozen options from the dataset, which
costs more than the decode of a small CT itself (issue 16: the first epoch's decode
must keep up with a bare pydicom decode while it also windows, resizes and caches).
Only a frame whose every Image Pixel value is plainly valid is read here; anything
else (compressed, big endian, multi-frame, colour, a length that is not the one
expected, an invalid value) goes to pydicom, with its checks, errors and warnings.

The few values this needs (Image Pixel, Rescale Slope/Intercept, Modality) are
read through ``imaging.dicom_values.HeaderValues``, from their raw bytes where that is
exact, for the same reason: pydicom's conversion of an element costs ~10 us, as much
as the arithmetic on the whole frame.

``plain_file`` goes one step further for a plain file (imaging/dicom_scan.py: what
``dcmread`` would read, found without it, which alone costs a third of a bare decode):
when every value ``read_image`` needs is plain, the pixels are read and decoded with no
``Dataset`` at all; otherwise it answers None and the reader parses the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from imaging.dicom_scan import scan
from imaging.dicom_values import HeaderValues, NeedsPydicom
from imaging.transforms import Stored

__all__ = ["PlainFile", "pixel_values", "plain_file", "plain_native", "rescaled"]

_LITTLE_NATIVE = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian})
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_PIXEL_DATA, _OTHER_PIXELS = 0x7FE00010, (0x7FE00008, 0x7FE00009)
_IMAGE_PIXEL = (0x00280010, 0x00280011, 0x00280002, 0x00280100, 0x00280101, 0x00280103)
"""Rows, Columns, Samples per Pixel, Bits Allocated, Bits Stored, Pixel Representation
(all US)."""
_PHOTOMETRIC, _FRAMES, _MODALITY = 0x00280004, 0x00280008, 0x00080060
_SLOPE, _INTERCEPT, _MODALITY_LUT = 0x00281053, 0x00281052, 0x00283000
_SCANNED = frozenset({*_IMAGE_PIXEL, _PHOTOMETRIC, _FRAMES, _MODALITY, _SLOPE, _INTERCEPT,
                      _MODALITY_LUT})
_DEFER = 4096
"""Values longer than this are not read by the scan (the pixels: read once decoding)."""


def _value(ds: pydicom.Dataset, tag: int) -> Any:
    elem = ds.get(tag)
    return None if elem is None else elem.value


def pixel_values(ds: pydicom.Dataset) -> np.ndarray:
    """What pydicom's ``pixel_array(ds)`` returns (not ``ds.pixel_array``, which adds two
    scans of ~20 attributes for a cache that a dataset read once never uses)."""
    arr = plain_native(ds)
    return arr if arr is not None else np.asarray(pixel_array(ds))


def plain_native(ds: pydicom.Dataset) -> np.ndarray | None:
    """One grayscale frame of native little endian pixel data as pydicom's native decoder
    gives it (read from the bytes, its unused high bits then cleared or sign-extended:
    ``correct_unused_bits``, a writeable copy), or None for anything less plain."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get(0x00020010) if meta is not None else None
    if syntax is None or syntax.value not in _LITTLE_NATIVE:
        return None
    if any(tag in ds for tag in _OTHER_PIXELS) or _value(ds, _FRAMES) not in (None, 1):
        return None
    values = HeaderValues.of(ds)
    data = _value(ds, _PIXEL_DATA)
    if not isinstance(data, bytes) or values.value(_PHOTOMETRIC) not in _MONOCHROME:
        return None
    return _frame(data, [values.value(tag) for tag in _IMAGE_PIXEL])


def _frame(data: bytes, numbers: list[Any]) -> np.ndarray | None:
    """``plain_native``'s decode of ``data`` given the Image Pixel values, or None."""
    if not all(type(v) is int for v in numbers):
        return None
    rows, cols, samples, bits, stored, signed = numbers
    if (samples != 1 or bits not in (8, 16, 32) or not 1 <= stored <= bits
            or signed not in (0, 1) or not (0 < rows < 1 << 16 and 0 < cols < 1 << 16)):
        return None
    expected = rows * cols * bits // 8
    if len(data) not in (expected, expected + expected % 2):  # odd lengths are padded
        return None
    dtype = np.dtype(f"<{'ui'[signed]}{bits // 8}")
    arr = np.frombuffer(data, dtype, rows * cols).reshape(rows, cols)
    if bits == stored:
        return arr.copy()
    arr = np.left_shift(arr, bits - stored)  # the copy, and pydicom's two shifts
    np.right_shift(arr, bits - stored, out=arr)
    return arr


def rescaled(arr: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, Stored | None]:
    """Grayscale values in physical units: the modality LUT, or the rescale in float32
    (``Stored.physical``); with the stored integers when a rescale made them."""
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(arr, ds), None
    values = HeaderValues.of(ds)
    slope, intercept = _number(values, _SLOPE), _number(values, _INTERCEPT)
    stored = Stored(arr, slope, intercept)
    return stored.physical(arr), stored if np.issubdtype(arr.dtype, np.integer) else None


def _number(values: HeaderValues, tag: int) -> float | None:
    """A DS value as a float; None when absent or empty (pydicom's conversion decides
    anything but plain numbers: its errors are the reader's)."""
    value = values.value(tag)
    return None if value is None or value == "" else float(value)


@dataclass(frozen=True)
class PlainFile:
    """What ``read_image`` needs of a plain grayscale file, each value decoded from its
    raw bytes as pydicom converts it; the pixels still on disk."""

    path: Path
    pixels: RawDataElement
    header: HeaderValues
    """The scanned values (``Dataset.get`` for the reader's size checks)."""
    numbers: tuple[int, ...]
    """The Image Pixel values (``_IMAGE_PIXEL``)."""
    photometric: str
    modality: str
    """As ``ds.get("Modality", "")`` gives it."""
    slope: float | None
    intercept: float | None

    def decode(self) -> tuple[np.ndarray, Stored] | None:
        """The physical pixels and the stored values, read from the file; None if the file
        no longer holds them (it changed since the scan: the reader parses it anew)."""
        with open(self.path, "rb") as fh:
            fh.seek(self.pixels.value_tell)
            data = fh.read(self.pixels.length)
        arr = _frame(data, list(self.numbers))
        if arr is None:
            return None
        stored = Stored(arr, self.slope, self.intercept)
        return stored.physical(arr), stored


def plain_file(path: Path, head: bytes, size: int) -> PlainFile | None:
    """The scan of a plain file whose every value ``read_image`` needs is plain: one
    native little endian grayscale frame in PixelData, no modality LUT, a rescale of plain
    numbers. None for anything else: the reader parses it with pydicom."""
    found = scan(path, head, size, _SCANNED, _DEFER)
    if found is None or found.pixel_tag != _PIXEL_DATA:
        return None
    elements = found.elements
    if any(t in elements for t in (*_OTHER_PIXELS, _FRAMES, _MODALITY_LUT)):
        return None
    header = HeaderValues(elements)  # no dataset: what only pydicom reads raises
    try:
        numbers = tuple(header.value(tag) for tag in _IMAGE_PIXEL)
        photometric, modality = header.value(_PHOTOMETRIC), header.value(_MODALITY) or ""
        slope, intercept = header.value(_SLOPE), header.value(_INTERCEPT)
    except NeedsPydicom:
        return None
    if (not all(type(n) is int for n in numbers) or photometric not in _MONOCHROME
            or type(modality) is not str
            or not all(v is None or type(v) is float for v in (slope, intercept))):
        return None
    return PlainFile(path, elements[_PIXEL_DATA], header, numbers, photometric, modality,
                     slope, intercept)
