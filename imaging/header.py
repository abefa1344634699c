"""Header-only reads: what an import needs to know of an image without decoding it.

Every image an import checks goes through ``read_header``: plain files through the
scanner (imaging/dicom_scan.py), anything else through pydicom with its pixels left
on disk, both to the same values and the same refusals as ``read_image``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from imaging.budget import (
    DecodeBudget,
    OverBudget,
    default_budget,
    deflated_header,
    is_deflated,
)
from imaging.dicom_meta import surely_not_deflated
from imaging.dicom_scan import scan
from imaging.dicom_values import VALUE_TAGS, HeaderValues
from imaging.read_checks import (
    DEFER,
    JPEG_MAGIC,
    MAX_IMAGE_BYTES,
    PIXEL_TAGS,
    PNG_MAGIC,
    UNDEFINED,
    CaseReadError,
    Dims,
    check_declared_size,
    estimate,
    no_pixels,
    open_checked,
    tag,
    why,
)
from imaging.series import SliceGeometry, geometry_of


@dataclass(frozen=True)
class ImageHeader:
    """What an import needs to know about an image without decoding its pixels."""

    format: str
    """``dicom``, ``png`` or ``jpeg``: sniffed from the bytes."""
    rows: int
    cols: int
    frames: int = 1
    samples: int = 1
    modality: str = ""
    """The DICOM Modality (CT, CR, DX, MR ...); empty for PNG/JPEG."""
    photometric: str = "MONOCHROME2"
    patient_id: str | None = None
    transfer_syntax: str | None = None
    compressed: bool = False
    """Encapsulated pixel data: only a decode can prove it intact."""
    window_center: float | None = None
    window_width: float | None = None
    geometry: SliceGeometry | None = None
    """Study/series UIDs, position, orientation, body part (imaging.series); DICOM only."""


def read_header(
    path: Path, *, max_bytes: int = MAX_IMAGE_BYTES, source: str | None = None,
    budget: DecodeBudget | None = None,
) -> ImageHeader:
    """Sizes, modality and patient of one image, checked without decoding pixels.

    Everything that can be known from the header is refused here, with the same
    ``CaseReadError`` kinds as ``read_image``: not an image, no pixel data, a
    declared size over ``max_bytes``, and native (uncompressed) pixel data that
    is shorter than the header promises or than the file holds (truncation), and
    an image whose decoding would need more memory than ``budget`` allows one image.
    """
    name = source or path.name
    size, head = open_checked(path, name, max_bytes)
    budget = budget or default_budget()
    if head.startswith(PNG_MAGIC) or head.startswith(JPEG_MAGIC):
        return _pillow_header(path, name, max_bytes, "png" if head[:1] == b"\x89" else "jpeg")
    quick = _scanned_header(path, head, size, name, max_bytes, budget)
    if quick is not None:
        return quick
    try:
        if not surely_not_deflated(head) and is_deflated(path):  # pydicom would inflate
            ds, tag = deflated_header(path)
        else:
            ds = pydicom.dcmread(path, force=True, defer_size=DEFER)
            tag = next((t for t in PIXEL_TAGS if t in ds), None)
        if tag is None:
            raise no_pixels(name, head[128:132] == b"DICM" or len(ds) > 2)
        values = cast(pydicom.Dataset, HeaderValues.of(ds))  # answers ``get`` as ds would
        dims = check_declared_size(values, name, max_bytes)
        budget.check(estimate(dims, size))
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        elem = ds.get_item(tag, keep_deferred=True)
        return _dicom_header(values, syntax, elem, dims, name, size)
    except CaseReadError:
        raise
    except OverBudget as exc:
        raise CaseReadError(name, str(exc), "too_large") from None
    except Exception as exc:
        raise CaseReadError(name, f"not a readable DICOM header ({why(exc)})") from exc


def _scanned_header(path: Path, head: bytes, size: int, name: str, max_bytes: int,
                    budget: DecodeBudget) -> ImageHeader | None:
    """The header of a plain file read by ``imaging.dicom_scan`` (a tenth of ``dcmread``'s
    cost), from the same values by the same checks; None: read it with pydicom.

    Any failure here, a refusal included, is left to pydicom's path as well: each
    error a header read reports comes from that one path.
    """
    try:
        scanned = scan(path, head, size, VALUE_TAGS, DEFER)
        if scanned is None:
            return None
        values = cast(pydicom.Dataset, HeaderValues(scanned.elements))
        dims = check_declared_size(values, name, max_bytes)
        budget.check(estimate(dims, size))
        return _dicom_header(values, scanned.syntax, scanned.elements[scanned.pixel_tag],
                             dims, name, size)
    except Exception:  # NeedsPydicom, a CaseReadError or OverBudget: pydicom's path says
        return None


def _dicom_header(values: pydicom.Dataset, syntax: UID | None, elem: Any, dims: Dims,
                  name: str, file_size: int) -> ImageHeader:
    """The header of a parsed DICOM: ``values`` (``HeaderValues``, answering ``get`` as a
    dataset does) gives element values, ``elem`` is the pixel data element as read."""
    rows, cols, frames, samples, bits = dims
    # Deflate hides the element offsets of the file: only a decode can check it.
    compressed = bool(syntax is not None
                      and (syntax.is_compressed or syntax == DeflatedExplicitVRLittleEndian))
    photometric = str(tag(values, 0x00280004, "MONOCHROME2")).strip().upper()
    if not compressed and isinstance(elem, RawDataElement) and elem.length != UNDEFINED:
        needed = (rows * cols * frames * samples * bits + 7) // 8
        if photometric == "YBR_FULL_422":
            needed = needed * 2 // 3  # chroma is subsampled 2:1 horizontally
        held = elem.length if elem.value is None else len(elem.value)
        if elem.value is None and elem.value_tell + elem.length > file_size:
            missing = elem.value_tell + elem.length - file_size
            raise CaseReadError(name, f"file is truncated: pixel data ends {missing} bytes "
                                "after the end of the file", "truncated")
        if held < needed:
            raise CaseReadError(name, f"pixel data holds {held} bytes but {rows}x{cols}x"
                                f"{frames} pixels need {needed}", "truncated")
    patient = str(tag(values, 0x00100020, "")).strip()
    return ImageHeader(
        format="dicom", rows=rows, cols=cols, frames=frames, samples=samples,
        modality=str(tag(values, 0x00080060, "")).strip().upper(), photometric=photometric,
        patient_id=patient or None, transfer_syntax=str(syntax) if syntax else None,
        compressed=compressed, window_center=_first_number(tag(values, 0x00281050)),
        window_width=_first_number(tag(values, 0x00281051)), geometry=geometry_of(values),
    )


def _first_number(value: object) -> float | None:
    """WindowCenter/Width may be multi-valued or malformed; take the first usable value."""
    if value is None:
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = next(iter(value), None)  # type: ignore[call-overload]
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _pillow_header(path: Path, name: str, max_bytes: int, fmt: str) -> ImageHeader:
    """Pillow reads only the header in ``open``; decompression bombs are refused there."""
    try:
        with Image.open(path) as im:
            cols, rows = im.size
            mode = im.mode
    except Image.DecompressionBombError as exc:
        raise CaseReadError(name, f"image is too large ({why(exc)})", "too_large") from exc
    except Exception as exc:
        raise CaseReadError(name, f"not a readable PNG/JPEG image ({why(exc)})") from exc
    if rows * cols * 4 > max_bytes:
        raise CaseReadError(name, f"{cols}x{rows} image is too large", "too_large")
    if min(rows, cols) < 1:
        raise CaseReadError(name, f"invalid image dimensions {rows}x{cols}")
    gray = mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    return ImageHeader(format=fmt, rows=rows, cols=cols, samples=1 if gray else 3,
                       photometric="MONOCHROME2" if gray else "RGB")
