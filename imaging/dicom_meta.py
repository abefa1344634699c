"""The transfer syntax of a DICOM file from its first bytes, without pydicom's parser.

``imaging.reader`` must know whether a file is deflated before pydicom reads it
(pydicom would inflate the whole dataset: imaging/budget.py). Asking pydicom for
the file meta costs as much as a tenth of a decode, so a conformant file meta
(after the "DICM" preamble, explicit VR little endian, the only encoding the
standard allows for group 0002) is read here from the bytes already read; for
anything else the answer is "cannot tell" and the caller asks pydicom.
"""

from __future__ import annotations

import struct

from pydicom.uid import DeflatedExplicitVRLittleEndian

HEAD_BYTES = 4096
"""How much of a file the readers read up front: the preamble and a usual file meta."""
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_DEFLATED = str(DeflatedExplicitVRLittleEndian).encode()


def meta_syntax(head: bytes) -> bytes | None:
    """The Transfer Syntax UID named by a file meta group that lies wholly in ``head``
    (b"" when the group names none); None when the bytes do not say for certain."""
    if head[128:132] != b"DICM":
        return None
    pos, syntax = 132, b""
    while pos + 4 <= len(head):
        group, element = struct.unpack_from("<HH", head, pos)
        if group != 2:
            return syntax
        vr = head[pos + 4 : pos + 6]
        if pos + (12 if vr in _LONG_VRS else 8) > len(head):
            return None
        if vr in _LONG_VRS:
            length, pos = struct.unpack_from("<I", head, pos + 8)[0], pos + 12
        elif vr.isalpha() and vr.isupper():
            length, pos = struct.unpack_from("<H", head, pos + 6)[0], pos + 8
        else:  # implicit VR file meta (not conformant): pydicom's parser decides
            return None
        if pos + length > len(head):
            return None
        if element == 0x0010:
            syntax = head[pos : pos + length].rstrip(b"\x00 ")
        pos += length
    return None


def surely_not_deflated(head: bytes) -> bool:
    """True only when the file meta in ``head`` names a syntax other than deflate."""
    syntax = meta_syntax(head)
    return syntax is not None and syntax != _DEFLATED
