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

The few values this needs (Image Pixel, Rescale Slope/Intercept) are read from their
raw bytes where that is exact (a little endian US, a plain single DS number), for
the same reason: pydicom's conversion of an element costs ~10 us, as much as the
arithmetic on the whole frame. Anything else is pydicom's conversion, as before.

``plain_file`` goes one step further for a plain file (imaging/dicom_scan.py: what
``dcmread`` would read, found without it, which alone costs a third of a bare decode):
when every value ``read_image`` needs is plain, the pixels are read and decoded with no
``Dataset`` at all; otherwise it answers None and the reader parses the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
from pydicom import config
from pydicom.dataelem import RawDataElement
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from imaging.dicom_scan import scan
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
_CS = re.compile(rb"[A-Z0-9_ ]*")
"""A CS value pydicom converts to its text less the trailing spaces."""
_MONOCHROME_RAW = {b"MONOCHROME1": "MONOCHROME1", b"MONOCHROME2": "MONOCHROME2",
                   b"MONOCHROME1 ": "MONOCHROME1", b"MONOCHROME2 ": "MONOCHROME2"}
_DS = re.compile(rb" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")
"""One DS number as ``float()`` reads it, as pydicom's ``DSfloat`` does (no multi-value,
no NUL padding; at most 16 bytes, so pydicom would not warn either)."""


def _value(ds: pydicom.Dataset, tag: int) -> Any:
    elem = ds.get(tag)
    return None if elem is None else elem.value


def _bytes(raw: Any, vr: str) -> bytes | None:
    """The value of an element still as read (a ``RawDataElement``), little endian, of
    VR ``vr`` (or implicit: the dictionary's, which is ``vr`` for the tags read here)."""
    if (isinstance(raw, RawDataElement) and raw.is_little_endian and raw.VR in (None, vr)
            and isinstance(raw.value, bytes)):
        return raw.value
    return None


def _us(raw: Any) -> int | None:
    """A US value as pydicom converts it, from its two bytes; None if it is not just that."""
    value = _bytes(raw, "US")
    return int.from_bytes(value, "little") if value is not None and len(value) == 2 else None


def _ds(raw: Any) -> float | None:
    """A DS value that is one plain number, as pydicom converts it; None if not."""
    value = _bytes(raw, "DS")
    if (value is None or len(value) > 16 or not _DS.fullmatch(value)
            or config.use_DS_decimal or config.use_DS_numpy):
        return None
    return float(value)


def _photometric(raw: Any) -> str | None:
    return _MONOCHROME_RAW.get(_bytes(raw, "CS") or b"")


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
    raw = partial(ds.get_item, keep_deferred=True)
    photometric = _photometric(raw(_PHOTOMETRIC)) or _value(ds, _PHOTOMETRIC)
    data = _value(ds, _PIXEL_DATA)
    if not isinstance(data, bytes) or photometric not in _MONOCHROME:
        return None
    numbers = [_us(raw(tag)) for tag in _IMAGE_PIXEL]
    return _frame(data, [_value(ds, t) if n is None else n
                         for t, n in zip(_IMAGE_PIXEL, numbers, strict=True)])


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
    slope, intercept = _number(ds, _SLOPE), _number(ds, _INTERCEPT)
    stored = Stored(arr, slope, intercept)
    return stored.physical(arr), stored if np.issubdtype(arr.dtype, np.integer) else None


def _number(ds: pydicom.Dataset, tag: int) -> float | None:
    """A DS value as a float; None when absent or empty (pydicom's conversion decides
    anything but one plain number: its errors are the reader's)."""
    plain = _ds(ds.get_item(tag, keep_deferred=True))
    if plain is not None:
        return plain
    value = _value(ds, tag)
    return None if value is None or value == "" else float(value)


class _Value:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


@dataclass(frozen=True)
class PlainFile:
    """What ``read_image`` needs of a plain grayscale file, each value decoded from its
    raw bytes as pydicom converts it; the pixels still on disk."""

    path: Path
    pixels: RawDataElement
    values: dict[int, int]
    """The Image Pixel values (``_IMAGE_PIXEL``)."""
    photometric: str
    modality: str
    """As ``ds.get("Modality", "")`` gives it."""
    slope: float | None
    intercept: float | None

    def get(self, tag: int) -> _Value | None:
        """``Dataset.get(tag)`` for the Image Pixel values (the reader's size checks)."""
        value = self.values.get(tag)
        return None if value is None else _Value(value)

    def decode(self) -> tuple[np.ndarray, Stored] | None:
        """The physical pixels and the stored values, read from the file; None if the file
        no longer holds them (it changed since the scan: the reader parses it anew)."""
        with open(self.path, "rb") as fh:
            fh.seek(self.pixels.value_tell)
            data = fh.read(self.pixels.length)
        arr = _frame(data, [self.values[t] for t in _IMAGE_PIXEL])
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
    numbers = {tag: _us(elements.get(tag)) for tag in _IMAGE_PIXEL}
    photometric = _photometric(elements.get(_PHOTOMETRIC))
    modality = _modality(elements.get(_MODALITY))
    rescale = [_rescale_value(elements.get(tag)) for tag in (_SLOPE, _INTERCEPT)]
    values = {tag: n for tag, n in numbers.items() if n is not None}
    if len(values) < len(_IMAGE_PIXEL) or photometric is None or modality is None \
            or _NOT_PLAIN in rescale:
        return None
    slope, intercept = (cast(float | None, r) for r in rescale)
    return PlainFile(path, elements[_PIXEL_DATA], values, photometric, modality, slope,
                     intercept)


_NOT_PLAIN = object()


def _modality(raw: RawDataElement | None) -> str | None:
    """``ds.get("Modality", "")`` of a plain CS value (or none); None if not plain."""
    if raw is None:
        return ""
    value = _bytes(raw, "CS")
    return value.decode().rstrip(" ") if value is not None and _CS.fullmatch(value) else None


def _rescale_value(raw: RawDataElement | None) -> object:
    """A slope or intercept as ``rescaled`` reads it (None: absent or empty), or
    ``_NOT_PLAIN``."""
    if raw is None or (raw.length == 0 and _bytes(raw, "DS") is not None):
        return None
    value = _ds(raw)
    return _NOT_PLAIN if value is None else value
