"""Header values by tag, decoded from raw elements where that is exact.

``imaging.reader.read_header`` needs about twenty values of every image an import
checks. pydicom converts an element on first access (VR lookup, hooks,
validation, a ``DataElement`` stored back into the dataset): for a small header
that costs about as much as the parse itself. The values read here are few and
of simple VRs (US, IS, DS, CS, LO, UI), so for the common encoding (a little
endian value of the VR the dictionary gives, ASCII text without delimiters) they
are decoded from the raw bytes directly, to what pydicom's own conversion
returns. Anything else (another VR, a deferred or odd-length value, non-ASCII or
multi-valued text, a number pydicom might read differently) is left to pydicom:
the result never differs from ``ds.get(tag).value``. Without a dataset to ask
(``imaging.dicom_scan``), such a value raises ``NeedsPydicom`` instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydicom import config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

__all__ = ["VALUE_TAGS", "HeaderValues", "NeedsPydicom"]

_VR: dict[int, str] = {
    0x00280002: "US", 0x00280010: "US", 0x00280011: "US", 0x00280100: "US",
    0x00280101: "US", 0x00280103: "US",
    0x00280008: "IS", 0x00200013: "IS",
    0x00281050: "DS", 0x00281051: "DS", 0x00200032: "DS", 0x00200037: "DS",
    0x00281052: "DS", 0x00281053: "DS",
    0x00080060: "CS", 0x00280004: "CS", 0x00180015: "CS",
    0x00100020: "LO", 0x00081030: "LO", 0x0008103E: "LO",
    0x0020000D: "UI", 0x0020000E: "UI", 0x00080018: "UI",
}
"""The tags decoded here and the VR the DICOM dictionary gives each (the VR pydicom
uses for an implicit VR file)."""
VALUE_TAGS = frozenset(_VR)
_TEXT = frozenset({"CS", "LO", "UI"})
_NUMERIC = frozenset({"IS", "DS"})
_INT = re.compile(rb" *[+-]?[0-9]+")
"""An IS value ``int()`` reads as pydicom's ``IS`` does (after the trailing padding)."""
_NUMBER = rb" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *"
_DS = re.compile(_NUMBER + rb"(?:\\" + _NUMBER + rb")*[ \x00]*")
"""A DS value whose every item ``float()`` reads as pydicom's ``DSfloat`` does."""
_MISSING = object()


class NeedsPydicom(Exception):
    """A value only pydicom's conversion can give, and no dataset to ask."""


class _Element:
    """What ``imaging.series`` and ``imaging.reader._tag`` read of an element: its value."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class HeaderValues:
    """``ds.get(tag)`` and its value, cheaper for the tags an import reads.

    ``elements`` are the elements as read (pydicom's ``RawDataElement``s by tag);
    ``ds``, the dataset they belong to, converts what is not decoded here (none:
    ``NeedsPydicom``). ``get`` answers like ``Dataset.get`` for the element-reading
    helpers of ``imaging.series``; ``value`` gives the value, None when absent or empty.
    """

    __slots__ = ("_ds", "_elements")

    def __init__(self, elements: Mapping[Any, Any], ds: Dataset | None = None) -> None:
        self._elements = elements
        self._ds = ds

    @classmethod
    def of(cls, ds: Dataset) -> HeaderValues:
        # The elements as read, unconverted: ``get_item(tag, keep_deferred=True)`` without
        # its tag normalisation, a tenth of a small header's read over ~20 look-ups.
        return cls(ds._dict, ds)

    def value(self, tag: int) -> Any:
        """The value of ``tag`` as pydicom converts it; None when absent or empty."""
        fast = self._fast(tag)
        if fast is not _MISSING:
            return fast
        elem = self._pydicom(tag)
        return None if elem is None else elem.value

    def get(self, tag: int) -> Any:
        """An element-like object with the value of ``tag`` (None when absent)."""
        fast = self._fast(tag)
        if fast is _MISSING:
            return self._pydicom(tag)
        return None if fast is None else _Element(fast)

    def _pydicom(self, tag: int) -> Any:
        if self._ds is None:
            raise NeedsPydicom(f"({tag >> 16:04X},{tag & 0xFFFF:04X})")
        return self._ds.get(tag)

    def _fast(self, tag: int) -> Any:
        """The decoded value, None when absent, ``_MISSING`` when pydicom must decide."""
        elem = self._elements.get(tag)
        if elem is None:
            return None
        vr = _VR.get(tag)
        if vr is None:
            return _MISSING
        if not isinstance(elem, RawDataElement):
            return elem.value  # converted already
        if elem.VR not in (None, vr) or not elem.is_little_endian:
            return _MISSING
        if elem.length == 0:
            return None  # pydicom's empty value of these VRs: None or ""
        raw = elem.value
        if raw is None:  # deferred
            return _MISSING
        if vr in _NUMERIC and (config.use_DS_numpy or config.use_DS_decimal
                               or config.use_IS_numpy):
            return _MISSING  # pydicom is set to return other number types
        return _decode(raw, vr)


def _decode(raw: bytes, vr: str) -> Any:
    """pydicom's value of ``raw`` for the VRs above, or ``_MISSING`` where unsure."""
    if vr == "US":
        return int.from_bytes(raw, "little") if len(raw) == 2 else _MISSING
    if not raw.isascii() or b"\x1b" in raw:  # the character set could matter
        return _MISSING
    if vr in _TEXT:
        if b"\\" in raw:  # multi-valued: pydicom's MultiValue
            return _MISSING
        return raw.decode("ascii").rstrip("\x00 ")
    text = raw.rstrip(b" \x00")
    if not text:
        return None  # pydicom gives "" here: "no value" to every reader of these tags
    if vr == "IS":
        return int(text) if _INT.fullmatch(text) else _MISSING
    if not _DS.fullmatch(raw):
        return _MISSING
    items = [float(x) for x in text.split(b"\\")]
    return items[0] if len(items) == 1 else items
