"""Reading untrusted images (DICOM, PNG, JPEG) into physical units.

Reading is kept apart from pixel transforms (``imaging.transforms``), as
MONAI keeps ``ImageReader`` apart from ``ScaleIntensityRange``: the gateway's
previews, the dataset importers and the runner all read through here, and no
torch is needed. Every way a file can be wrong becomes one ``CaseReadError``
naming the file, never a crash deep inside a decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.pixels import apply_color_lut
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from imaging.budget import (
    DecodeBudget,
    DecodeBusy,
    OverBudget,
    decode_estimate,
    default_budget,
    deflated_header,
    is_deflated,
)
from imaging.dicom_meta import HEAD_BYTES, surely_not_deflated
from imaging.dicom_pixels import PlainFile, pixel_values, plain_file, rescaled
from imaging.dicom_scan import scan
from imaging.dicom_values import VALUE_TAGS, HeaderValues
from imaging.series import SliceGeometry, geometry_of
from imaging.transforms import ImageArray, Stored

MAX_IMAGE_BYTES = 512 * 1024 * 1024
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PNG_MAGIC, _JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


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

def read_image(
    path: Path, *, max_bytes: int = MAX_IMAGE_BYTES, source: str | None = None,
    budget: DecodeBudget | None = None,
) -> ImageArray:
    """Decode one DICOM, PNG or JPEG file to physical units (HU for CT).

    The format is sniffed from the bytes, not trusted from the name. The memory
    the decode will need is estimated from the header and reserved from
    ``budget`` (default: the process's, imaging/budget.py) before any decoding:
    an image over the per-request limit is a ``too_large`` CaseReadError, a full
    process budget raises ``DecodeBusy`` after its wait.
    """
    name = source or path.name
    size, head = _open_checked(path, name, max_bytes)
    budget = budget or default_budget()
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return _read_pillow(path, name, max_bytes, budget, size)
    return _read_dicom(path, name, max_bytes, budget, size, head)


def _open_checked(path: Path, name: str, max_bytes: int) -> tuple[int, bytes]:
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


def _read_dicom(path: Path, name: str, max_bytes: int, budget: DecodeBudget, size: int,
                head: bytes) -> ImageArray:
    """pydicom with ``force`` (preamble-less files exist); modality LUT applied. A plain
    file (one native grayscale frame: ``plain_file``) is read to the same image without
    pydicom's parser, which costs more than the rest of its decode.

    The header is read first (the pixels of a file over ``_INLINE_BYTES`` deferred; for
    a deflated file, only a bounded prefix is inflated) and the decode's memory
    reserved; only then the pixels are decoded.
    Any exception from the parser or a decoder becomes a CaseReadError: the
    input is untrusted, so no failure mode of a third-party decoder may escape.
    """
    preamble = head[128:132] == b"DICM"
    try:
        plain = plain_file(path, head, size)  # most files: no pydicom parse (issue 16)
        image = None if plain is None else _read_plain(plain, name, max_bytes, budget, size)
        if image is not None:
            return image
        deflated = not surely_not_deflated(head) and is_deflated(path)
        if deflated:
            ds, pixel_tag = deflated_header(path)
        else:
            ds = pydicom.dcmread(path, force=True,
                                 defer_size=None if size <= _INLINE_BYTES else _DEFER)
            pixel_tag = next((t for t in _PIXEL_TAGS if t in ds), None)
        if pixel_tag is None:
            raise _no_pixels(name, preamble or deflated or len(ds) > 2)
        # the values decoded from their raw bytes where exact, as read_header reads them
        dims = _check_declared_size(cast(pydicom.Dataset, HeaderValues.of(ds)), name, max_bytes)
        with budget.reserve(_estimate(dims, size)):
            if deflated:
                ds = pydicom.dcmread(path, force=True)
            return _decode_dicom(ds, name)
    except (CaseReadError, DecodeBusy):
        raise
    except OverBudget as exc:
        raise CaseReadError(name, str(exc), "too_large") from None
    except Exception as exc:
        kind = "truncated" if _looks_truncated(exc) else "unreadable"
        raise CaseReadError(name, f"not a decodable DICOM image ({_why(exc)})", kind) from exc


def _read_plain(plain: PlainFile, name: str, max_bytes: int, budget: DecodeBudget,
                size: int) -> ImageArray | None:
    """A plain file (imaging/dicom_pixels.py) as the path through pydicom reads it, its
    checks in the same order; None if the file changed since it was scanned."""
    dims = _check_declared_size(cast(pydicom.Dataset, plain.header), name, max_bytes)
    with budget.reserve(_estimate(dims, size)):
        decoded = plain.decode()
        modality = str(plain.modality or "OT").strip()
        return None if decoded is None else _checked(decoded[0], name, modality,
                                                     plain.photometric, decoded[1])


def _estimate(dims: Dims, file_bytes: int) -> int:
    rows, cols, frames, samples, bits = dims
    return decode_estimate(rows, cols, frames=frames, samples=samples, bits=bits,
                           file_bytes=file_bytes)


def _decode_dicom(ds: pydicom.Dataset, name: str) -> ImageArray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    modality = str(ds.get("Modality", "") or "OT")
    arr, stored = pixel_values(ds), None  # imaging/dicom_pixels.py
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        arr, stored = rescaled(arr, ds)
    elif photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim >= 3 and arr.shape[-1] == 3 and photometric not in ("MONOCHROME1", "MONOCHROME2"):
        photometric = "RGB"  # pydicom converts YBR to RGB by default
        arr = arr[arr.shape[0] // 2] if arr.ndim == 4 else arr
    return _checked(arr, name, modality.strip(), photometric, stored)


Dims = tuple[int, int, int, int, int]


def _check_declared_size(ds: pydicom.Dataset, name: str, max_bytes: int) -> Dims:
    """Refuse before decoding what would decompress past the limit (zip-bomb style)."""
    rows, cols, frames, samples, bits = dims = _dimensions(ds, name)
    decoded = rows * cols * frames * samples * max(bits, 8) // 8
    if decoded > max_bytes:
        raise CaseReadError(name, f"decoded image would be {decoded} bytes, over {max_bytes}",
                            "too_large")
    return dims


def _tag(ds: pydicom.Dataset, tag: int, default: Any = None) -> Any:
    """An element's value by numeric tag: no keyword lookup, which adds up over 10k files."""
    elem = ds.get(tag)
    return default if elem is None or elem.value is None or elem.value == "" else elem.value


def _dimensions(ds: pydicom.Dataset, name: str) -> Dims:
    """(rows, cols, frames, samples, bits allocated), each checked to be positive."""
    rows, cols = _tag(ds, 0x00280010), _tag(ds, 0x00280011)
    if rows is None or cols is None:
        raise CaseReadError(name, "DICOM image header lacks Rows/Columns", "no_pixel_data")
    rows, cols = int(rows), int(cols)
    frames = int(_tag(ds, 0x00280008, 1) or 1)
    samples = int(_tag(ds, 0x00280002, 1) or 1)
    bits = int(_tag(ds, 0x00280100, 16) or 16)
    if min(rows, cols, frames, samples, bits) <= 0:
        raise CaseReadError(name, f"invalid image dimensions {rows}x{cols}x{frames}")
    return rows, cols, frames, samples, bits


def _no_pixels(name: str, dicom: bool) -> CaseReadError:
    if dicom:
        return CaseReadError(name, "DICOM file has no pixel data (PixelData missing)",
                             "no_pixel_data")
    return CaseReadError(name, "not a DICOM, PNG or JPEG image", "not_image")


_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _read_pillow(path: Path, name: str, max_bytes: int, budget: DecodeBudget,
                 size: int) -> ImageArray:
    """PNG/JPEG: 8/16-bit grayscale stays one plane, anything else becomes RGB."""
    try:
        with Image.open(path) as im:
            if im.size[0] * im.size[1] * 4 > max_bytes:
                raise CaseReadError(name, f"{im.size[0]}x{im.size[1]} image is too large",
                                    "too_large")
            gray = im.mode in _GRAY_MODES
            # Pillow holds up to 4 bytes a pixel, then its conversion: two arrays' worth.
            needed = decode_estimate(im.size[1], im.size[0], samples=1 if gray else 3,
                                     bits=64 if gray else 16, file_bytes=size)
            with budget.reserve(needed):
                im.load()
                if gray:
                    plane = im.convert("L") if im.mode in ("1", "LA") else im
                    arr, photometric = np.asarray(plane), "MONOCHROME2"
                else:
                    arr, photometric = np.asarray(im.convert("RGB")), "RGB"
                return _checked(arr, name, "OT", photometric)
    except (CaseReadError, DecodeBusy):
        raise
    except OverBudget as exc:
        raise CaseReadError(name, str(exc), "too_large") from None
    except Exception as exc:
        raise CaseReadError(name, f"not a readable PNG/JPEG image ({_why(exc)})") from exc


def _checked(arr: np.ndarray, name: str, modality: str, photometric: str,
             stored: Stored | None = None) -> ImageArray:
    """Last gate: the shapes the transforms accept, and finite values only."""
    pixels = np.asarray(arr, dtype=np.float32)
    colour = photometric == "RGB"
    ok = (pixels.ndim == 3 and pixels.shape[-1] == 3) if colour else pixels.ndim in (2, 3)
    if not ok or min(pixels.shape) < 1:
        raise CaseReadError(name, f"unsupported pixel array shape {pixels.shape} ({photometric})")
    if not np.isfinite(pixels).all():
        raise CaseReadError(name, "pixel data contains NaN or infinite values")
    return ImageArray(pixels=pixels, modality=modality, photometric=photometric,
                      stored=stored)


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _looks_truncated(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, EOFError) or "less than expected" in text or "truncat" in text


# --- header-only reads ----------------------------------------------------------

_UNDEFINED = 0xFFFFFFFF
_DEFER = 4096
"""Elements longer than this are not read by ``read_header``: pixels stay on disk."""
_INLINE_BYTES = 4 << 20
"""``read_image`` parses a file up to this size with its pixels (deferring them costs a
second open); a larger file's pixels wait until the decode's memory is reserved."""


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
    size, head = _open_checked(path, name, max_bytes)
    budget = budget or default_budget()
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return _pillow_header(path, name, max_bytes, "png" if head[:1] == b"\x89" else "jpeg")
    quick = _scanned_header(path, head, size, name, max_bytes, budget)
    if quick is not None:
        return quick
    try:
        if not surely_not_deflated(head) and is_deflated(path):  # pydicom would inflate
            ds, tag = deflated_header(path)
        else:
            ds = pydicom.dcmread(path, force=True, defer_size=_DEFER)
            tag = next((t for t in _PIXEL_TAGS if t in ds), None)
        if tag is None:
            raise _no_pixels(name, head[128:132] == b"DICM" or len(ds) > 2)
        values = cast(pydicom.Dataset, HeaderValues.of(ds))  # answers ``get`` as ds would
        dims = _check_declared_size(values, name, max_bytes)
        budget.check(_estimate(dims, size))
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        elem = ds.get_item(tag, keep_deferred=True)
        return _dicom_header(values, syntax, elem, dims, name, size)
    except CaseReadError:
        raise
    except OverBudget as exc:
        raise CaseReadError(name, str(exc), "too_large") from None
    except Exception as exc:
        raise CaseReadError(name, f"not a readable DICOM header ({_why(exc)})") from exc


def _scanned_header(path: Path, head: bytes, size: int, name: str, max_bytes: int,
                    budget: DecodeBudget) -> ImageHeader | None:
    """The header of a plain file read by ``imaging.dicom_scan`` (a tenth of ``dcmread``'s
    cost), from the same values by the same checks; None: read it with pydicom.

    Any failure here, a refusal included, is left to pydicom's path as well: each
    error a header read reports comes from that one path.
    """
    try:
        scanned = scan(path, head, size, VALUE_TAGS, _DEFER)
        if scanned is None:
            return None
        values = cast(pydicom.Dataset, HeaderValues(scanned.elements))
        dims = _check_declared_size(values, name, max_bytes)
        budget.check(_estimate(dims, size))
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
    photometric = str(_tag(values, 0x00280004, "MONOCHROME2")).strip().upper()
    if not compressed and isinstance(elem, RawDataElement) and elem.length != _UNDEFINED:
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
    patient = str(_tag(values, 0x00100020, "")).strip()
    return ImageHeader(
        format="dicom", rows=rows, cols=cols, frames=frames, samples=samples,
        modality=str(_tag(values, 0x00080060, "")).strip().upper(), photometric=photometric,
        patient_id=patient or None, transfer_syntax=str(syntax) if syntax else None,
        compressed=compressed, window_center=_first_number(_tag(values, 0x00281050)),
        window_width=_first_number(_tag(values, 0x00281051)), geometry=geometry_of(values),
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
        raise CaseReadError(name, f"image is too large ({_why(exc)})", "too_large") from exc
    except Exception as exc:
        raise CaseReadError(name, f"not a readable PNG/JPEG image ({_why(exc)})") from exc
    if rows * cols * 4 > max_bytes:
        raise CaseReadError(name, f"{cols}x{rows} image is too large", "too_large")
    if min(rows, cols) < 1:
        raise CaseReadError(name, f"invalid image dimensions {rows}x{cols}")
    gray = mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    return ImageHeader(format=fmt, rows=rows, cols=cols, samples=1 if gray else 3,
                       photometric="MONOCHROME2" if gray else "RGB")
