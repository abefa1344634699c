"""A quick scan of a plain DICOM file: what pydicom's reader gives, or nothing.

``imaging.reader.read_header`` runs for every image an import checks, and
pydicom's ``dcmread`` builds five ``Dataset`` objects and a generator step per
element even for a small header: ten times the cost of walking the elements.
Most files are plain: a preamble, a conformant file meta, explicit or implicit
VR little endian, elements of defined length up to the end of the file. For
such a file this module walks the elements itself and returns what the header
read needs (the raw elements of ``wanted`` tags, the pixel data element, the
transfer syntax), exactly as ``dcmread(path, force=True, defer_size=4096)``
would have read them.

Whatever it is not sure to read as pydicom does is left to pydicom (``scan``
returns None): no preamble, a file meta that pydicom would read another way
(implicit VR, no transfer syntax, an unusual first element, beyond the first
bytes), another transfer syntax, an undefined length, an item delimiter, a
value or an element header running past the end of the file, a VR pydicom
does not know, a mismatch pydicom's implicit/explicit check would correct,
command set elements, multi-frame functional groups (``imaging.series`` parses
them), a strict pydicom configuration. Every error message therefore comes
from pydicom's path: this one only ever answers for files pydicom reads cleanly.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from pydicom import config
from pydicom.dataelem import RawDataElement
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

__all__ = ["PIXEL_TAGS", "Scanned", "scan"]

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
"""PixelData, FloatPixelData, DoubleFloatPixelData: the order ``read_header`` looks."""
_CHARSET = 0x00080005
_UNDEFINED = 0xFFFFFFFF
_REFUSED = frozenset({0xFFFEE00D, 0x52009229, 0x52009230})
"""An item delimiter ends pydicom's read early; the shared and per-frame functional
groups are sequences that ``imaging.series`` asks pydicom to parse."""
_VRS = frozenset(str(vr).encode() for vr in VR if len(str(vr)) == 2)
_LONG_VRS = frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_32)
_SYNTAXES = {str(ExplicitVRLittleEndian).encode(): ExplicitVRLittleEndian,
             str(ImplicitVRLittleEndian).encode(): ImplicitVRLittleEndian}
_EXPLICIT = struct.Struct("<HH2sH").unpack_from
_IMPLICIT = struct.Struct("<HHL").unpack_from
_U32 = struct.Struct("<L").unpack_from
_READ = 64 * 1024
"""Bytes read at once when the elements go past what is at hand."""
_MAX_READS = 4


@dataclass(frozen=True, slots=True)
class Scanned:
    """The parts of pydicom's reading of a file that ``read_header`` uses."""

    syntax: UID
    elements: dict[int, RawDataElement]
    """The wanted elements (and the pixel data element) as pydicom's reader yields them."""
    pixel_tag: int


def scan(path: Path, head: bytes, size: int, wanted: Collection[int],
         defer: int) -> Scanned | None:
    """``head`` (the file's first bytes, ``size`` in all) and more of ``path`` if needed,
    as ``dcmread(path, force=True, defer_size=defer)`` reads them: a longer value
    (but the character set's) is not read, its element's value is None.

    None where pydicom might read the file otherwise than described above.
    """
    if head[128:132] != b"DICM" or config.settings.reading_validation_mode == config.RAISE:
        return None
    meta = _file_meta(head)
    if meta is None:
        return None
    syntax, start = meta
    buf = _Buffer(path, head, size)
    elements = _walk(buf, start, syntax is ImplicitVRLittleEndian, wanted, defer)
    if elements is None:
        return None
    pixel_tag = next((t for t in PIXEL_TAGS if t in elements), None)
    return None if pixel_tag is None else Scanned(syntax, elements, pixel_tag)


def _file_meta(head: bytes) -> tuple[UID, int] | None:
    """(transfer syntax, offset of the data set) of a file meta wholly in ``head``.

    Only a group pydicom reads the same way: explicit VR, (0002,0000) first (pydicom
    converts the first element as a test), known VRs, defined lengths.
    """
    pos, syntax = 132, None
    while pos + 8 <= len(head):
        group, element, vr, length = _EXPLICIT(head, pos)
        if group != 2:
            return (syntax, pos) if syntax is not None else None
        if vr not in _VRS or (pos == 132 and (element, vr, length) != (0, b"UL", 4)):
            return None
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                return None
            length, pos = _U32(head, pos + 8)[0], pos + 12
        else:
            pos += 8
        if pos + length > len(head):  # also an undefined length
            return None
        if element == 0x0010:
            syntax = _SYNTAXES.get(head[pos:pos + length].rstrip(b"\x00 "))
            if syntax is None:
                return None
        pos += length
    return None


class _Buffer:
    """Bytes of the file around an offset: the first bytes, read on when needed."""

    __slots__ = ("base", "data", "path", "reads", "size")

    def __init__(self, path: Path, head: bytes, size: int) -> None:
        self.path, self.data, self.base, self.size, self.reads = path, head, 0, size, 0

    def at(self, pos: int, n: int) -> int | None:
        """Offset into ``data`` of file bytes ``[pos, pos + n)``; None if they cannot be had."""
        off = pos - self.base
        if off >= 0 and off + n <= len(self.data):
            return off
        if pos + n > self.size or self.reads >= _MAX_READS:
            return None
        self.reads += 1
        with open(self.path, "rb") as fh:
            fh.seek(pos)
            self.data, self.base = fh.read(max(n, _READ)), pos
        return 0 if len(self.data) >= n else None


def _walk(buf: _Buffer, pos: int, implicit: bool, wanted: Collection[int], defer: int
          ) -> dict[int, RawDataElement] | None:
    """The wanted and pixel elements of the data set from ``pos`` to the end of the file."""
    size, found = buf.size, {}
    if pos + 6 <= size:  # pydicom's implicit/explicit check of the first element
        off = buf.at(pos, 6)
        if off is None or _looks_implicit(buf.data, off) != implicit:
            return None
    while pos < size:
        head = _element(buf, pos, implicit)
        if head is None:
            return None
        tag, vr, length, start = head
        end = start + length
        if length == _UNDEFINED or end > size or tag in _REFUSED or tag >> 16 == 0:
            return None
        if tag in wanted or tag in PIXEL_TAGS:
            value: bytes | None = None
            if length <= defer or tag == _CHARSET:
                off = buf.at(start, length)
                if off is None:
                    return None
                value = buf.data[off:off + length]
            found[tag] = RawDataElement(tag, vr, length, value, start,  # type: ignore[arg-type]
                                        implicit, True)
        pos = end
    return found


def _looks_implicit(data: bytes, off: int) -> bool:
    """pydicom's ``_is_implicit_vr``: a first element whose VR bytes are not capitals."""
    return not (0x40 < data[off + 4] < 0x5B and 0x40 < data[off + 5] < 0x5B)


def _element(buf: _Buffer, pos: int, implicit: bool) -> tuple[int, str | None, int, int] | None:
    """(tag, VR or None, length, offset of the value) of the element at ``pos``."""
    off = buf.at(pos, 12 if pos + 12 <= buf.size else 8)
    if off is None:
        return None
    data = buf.data
    if implicit:
        group, element, length = _IMPLICIT(data, off)
        return group << 16 | element, None, length, pos + 8
    group, element, vr, length = _EXPLICIT(data, off)
    if vr not in _VRS:
        return None
    if vr in _LONG_VRS:
        if off + 12 > len(data):
            return None
        return group << 16 | element, vr.decode(), _U32(data, off + 8)[0], pos + 12
    return group << 16 | element, vr.decode(), length, pos + 8
