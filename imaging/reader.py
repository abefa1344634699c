"""Reading untrusted images (DICOM, PNG, JPEG) into physical units.

Reading is kept apart from pixel transforms (``imaging.transforms``), as
MONAI keeps ``ImageReader`` apart from ``ScaleIntensityRange``: the gateway's
previews, the dataset importers and the runner all read through here, and no
torch is needed. Every way a file can be wrong becomes one ``CaseReadError``
naming the file, never a crash deep inside a decoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut

from imaging.budget import (
    DecodeBudget,
    DecodeBusy,
    OverBudget,
    decode_estimate,
    default_budget,
    deflated_header,
    is_deflated,
)
from imaging.dicom_meta import surely_not_deflated
from imaging.dicom_pixels import PlainFile, pixel_values, plain_file, rescaled
from imaging.dicom_values import HeaderValues
from imaging.header import ImageHeader, read_header
from imaging.read_checks import (
    DEFER,
    INLINE_BYTES,
    JPEG_MAGIC,
    MAX_IMAGE_BYTES,
    PIXEL_TAGS,
    PNG_MAGIC,
    CaseReadError,
    check_declared_size,
    estimate,
    looks_truncated,
    no_pixels,
    open_checked,
    why,
)
from imaging.transforms import ImageArray, Stored

__all__ = ["MAX_IMAGE_BYTES", "CaseReadError", "ImageHeader", "read_header", "read_image"]
"""Header reads (imaging/header.py) and the shared checks are reached from here too."""


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
    size, head = open_checked(path, name, max_bytes)
    budget = budget or default_budget()
    if head.startswith(PNG_MAGIC) or head.startswith(JPEG_MAGIC):
        return _read_pillow(path, name, max_bytes, budget, size)
    return _read_dicom(path, name, max_bytes, budget, size, head)


def _read_dicom(path: Path, name: str, max_bytes: int, budget: DecodeBudget, size: int,
                head: bytes) -> ImageArray:
    """pydicom with ``force`` (preamble-less files exist); modality LUT applied. A plain
    file (one native grayscale frame: ``plain_file``) is read to the same image without
    pydicom's parser, which costs more than the rest of its decode.

    The header is read first (the pixels of a file over ``INLINE_BYTES`` deferred; for
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
                                 defer_size=None if size <= INLINE_BYTES else DEFER)
            pixel_tag = next((t for t in PIXEL_TAGS if t in ds), None)
        if pixel_tag is None:
            raise no_pixels(name, preamble or deflated or len(ds) > 2)
        # the values decoded from their raw bytes where exact, as read_header reads them
        dims = check_declared_size(cast(pydicom.Dataset, HeaderValues.of(ds)), name, max_bytes)
        with budget.reserve(estimate(dims, size)):
            if deflated:
                ds = pydicom.dcmread(path, force=True)
            return _decode_dicom(ds, name)
    except (CaseReadError, DecodeBusy):
        raise
    except OverBudget as exc:
        raise CaseReadError(name, str(exc), "too_large") from None
    except Exception as exc:
        kind = "truncated" if looks_truncated(exc) else "unreadable"
        raise CaseReadError(name, f"not a decodable DICOM image ({why(exc)})", kind) from exc


def _read_plain(plain: PlainFile, name: str, max_bytes: int, budget: DecodeBudget,
                size: int) -> ImageArray | None:
    """A plain file (imaging/dicom_pixels.py) as the path through pydicom reads it, its
    checks in the same order; None if the file changed since it was scanned."""
    dims = check_declared_size(cast(pydicom.Dataset, plain.header), name, max_bytes)
    with budget.reserve(estimate(dims, size)):
        decoded = plain.decode()
        modality = str(plain.modality or "OT").strip()
        return None if decoded is None else _checked(decoded[0], name, modality,
                                                     plain.photometric, decoded[1])


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
        raise CaseReadError(name, f"not a readable PNG/JPEG image ({why(exc)})") from exc


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
