"""The checks every read of an untrusted image starts with (imaging/reader.py decodes,
imaging/header.py reads headers only): the same refusals, the same errors, from
one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom

from imaging.budget import decode_estimate
from imaging.dicom_meta import HEAD_BYTES

MAX_IMAGE_BYTES = 512 * 1024 * 1024
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


UNDEFINED = 0xFFFFFFFF
DEFER = 4096
"""Elements longer than this are not read by ``read_header``: pixels stay on disk."""
INLINE_BYTES = 4 << 20
"""``read_image`` parses a file up to this size with its pixels (deferring them costs a
second open); a larger file's pixels wait until the decode's memory is reserved."""


class CaseReadError(ValueError):
    """One case's image could not be read; the message names the file and why.

    Not an infra error on purpose (imaging imports schemas only): the runner
    maps it to a permanent failure, the importer to a per-case report line.

    ``kind`` sorts the failure for import reports (``unreadable``, ``not_image``,
    ``no_pixel_data``, ``truncated``, ``too_large``, ``empty``) without parsing text.
    """

    def __init__(self, source: str, reason: str, kind: str = "unreadable") -> None:
        super().__init__(f"{source}: {reason}")
        self.code = "case_unreadable"
        self.message = f"{source}: {reason}"
        self.source = source
        self.reason = reason
        self.kind = kind

def open_checked(path: Path, name: str, max_bytes: int) -> tuple[int, bytes]:
    """File size and first bytes (the preamble, a usual file meta), refusing empty and
    oversized files up front."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as exc:
        raise CaseReadError(name, f"cannot open file ({exc.strerror or exc})") from exc
    if size > max_bytes:
        raise CaseReadError(name, f"file is {size} bytes, over the {max_bytes}-byte limit",
                            "too_large")
    if size == 0:
        raise CaseReadError(name, "file is empty", "empty")
    return size, head


def estimate(dims: Dims, file_bytes: int) -> int:
    rows, cols, frames, samples, bits = dims
    return decode_estimate(rows, cols, frames=frames, samples=samples, bits=bits,
                           file_bytes=file_bytes)


Dims = tuple[int, int, int, int, int]


def check_declared_size(ds: pydicom.Dataset, name: str, max_bytes: int) -> Dims:
    """Refuse before decoding what would decompress past the limit (zip-bomb style)."""
    rows, cols, frames, samples, bits = dims = dimensions(ds, name)
    decoded = rows * cols * frames * samples * max(bits, 8) // 8
    if decoded > max_bytes:
        raise CaseReadError(name, f"decoded image would be {decoded} bytes, over {max_bytes}",
                            "too_large")
    return dims


def tag(ds: pydicom.Dataset, tag: int, default: Any = None) -> Any:
    """An element's value by numeric tag: no keyword lookup, which adds up over 10k files."""
    elem = ds.get(tag)
    return default if elem is None or elem.value is None or elem.value == "" else elem.value


def dimensions(ds: pydicom.Dataset, name: str) -> Dims:
    """(rows, cols, frames, samples, bits allocated), each checked to be positive."""
    rows, cols = tag(ds, 0x00280010), tag(ds, 0x00280011)
    if rows is None or cols is None:
        raise CaseReadError(name, "DICOM image header lacks Rows/Columns", "no_pixel_data")
    rows, cols = int(rows), int(cols)
    frames = int(tag(ds, 0x00280008, 1) or 1)
    samples = int(tag(ds, 0x00280002, 1) or 1)
    bits = int(tag(ds, 0x00280100, 16) or 16)
    if min(rows, cols, frames, samples, bits) <= 0:
        raise CaseReadError(name, f"invalid image dimensions {rows}x{cols}x{frames}")
    return rows, cols, frames, samples, bits


def no_pixels(name: str, dicom: bool) -> CaseReadError:
    if dicom:
        return CaseReadError(name, "DICOM file has no pixel data (PixelData missing)",
                             "no_pixel_data")
    return CaseReadError(name, "not a DICOM, PNG or JPEG image", "not_image")


def why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def looks_truncated(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, EOFError) or "less than expected" in text or "truncat" in text
