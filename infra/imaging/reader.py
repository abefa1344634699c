"""Reading untrusted images (DICOM, PNG, JPEG) into physical units.

Reading is kept apart from pixel transforms (``infra.imaging.transforms``), as
MONAI keeps ``ImageReader`` apart from ``ScaleIntensityRange``: the gateway's
previews, the dataset importers and the runner all read through here, and no
torch is needed. Every way a file can be wrong becomes one ``CaseReadError``
naming the file, never a crash deep inside a decoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_rescale

from infra.errors import PermanentError
from infra.imaging.transforms import ImageArray

MAX_IMAGE_BYTES = 512 * 1024 * 1024
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PNG_MAGIC, _JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


class CaseReadError(PermanentError):
    """One case's image could not be read; the message names the file and why."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__("case_unreadable", f"{source}: {reason}")
        self.source = source
        self.reason = reason

def read_image(
    path: Path, *, max_bytes: int = MAX_IMAGE_BYTES, source: str | None = None
) -> ImageArray:
    """Decode one DICOM, PNG or JPEG file to physical units (HU for CT).

    The format is sniffed from the bytes, not trusted from the name.
    """
    name = source or path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise CaseReadError(name, f"cannot open file ({exc.strerror or exc})") from exc
    if size > max_bytes:
        raise CaseReadError(name, f"file is {size} bytes, over the {max_bytes}-byte limit")
    if size == 0:
        raise CaseReadError(name, "file is empty")
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return _read_pillow(path, name, max_bytes)
    return _read_dicom(path, name, max_bytes, preamble=head[128:132] == b"DICM")


def _read_dicom(path: Path, name: str, max_bytes: int, *, preamble: bool) -> ImageArray:
    """pydicom with ``force`` (preamble-less files exist); modality LUT applied.

    Any exception from the parser or a decoder becomes a CaseReadError: the
    input is untrusted, so no failure mode of a third-party decoder may escape.
    """
    try:
        ds = pydicom.dcmread(path, force=True)
        if not any(tag in ds for tag in _PIXEL_TAGS):
            dicom = preamble or len(ds) > 2
            reason = "DICOM file has no pixel data (PixelData missing)"
            raise CaseReadError(name, reason if dicom else "not a DICOM, PNG or JPEG image")
        _check_declared_size(ds, name, max_bytes)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        modality = str(ds.get("Modality", "") or "OT")
        arr = np.asarray(ds.pixel_array)
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            arr = apply_rescale(arr, ds)
        elif photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
    except CaseReadError:
        raise
    except Exception as exc:
        raise CaseReadError(name, f"not a decodable DICOM image ({_why(exc)})") from exc
    if arr.ndim >= 3 and arr.shape[-1] == 3 and photometric not in ("MONOCHROME1", "MONOCHROME2"):
        photometric = "RGB"  # pydicom converts YBR to RGB by default
        arr = arr[arr.shape[0] // 2] if arr.ndim == 4 else arr
    return _checked(arr, name, modality.strip(), photometric)


def _check_declared_size(ds: pydicom.Dataset, name: str, max_bytes: int) -> None:
    """Refuse before decoding what would decompress past the limit (zip-bomb style)."""
    if "Rows" not in ds or "Columns" not in ds:
        raise CaseReadError(name, "DICOM image header lacks Rows/Columns")
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if min(rows, cols, frames, samples, bits) <= 0:
        raise CaseReadError(name, f"invalid image dimensions {rows}x{cols}x{frames}")
    decoded = rows * cols * frames * samples * max(bits, 8) // 8
    if decoded > max_bytes:
        raise CaseReadError(name, f"decoded image would be {decoded} bytes, over {max_bytes}")


def _read_pillow(path: Path, name: str, max_bytes: int) -> ImageArray:
    """PNG/JPEG: 8/16-bit grayscale stays one plane, anything else becomes RGB."""
    try:
        with Image.open(path) as im:
            if im.size[0] * im.size[1] * 4 > max_bytes:
                raise CaseReadError(name, f"{im.size[0]}x{im.size[1]} image is too large")
            im.load()
            if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
                gray = im.convert("L") if im.mode in ("1", "LA") else im
                arr, photometric = np.asarray(gray), "MONOCHROME2"
            else:
                arr, photometric = np.asarray(im.convert("RGB")), "RGB"
    except CaseReadError:
        raise
    except Exception as exc:
        raise CaseReadError(name, f"not a readable PNG/JPEG image ({_why(exc)})") from exc
    return _checked(arr, name, "OT", photometric)


def _checked(arr: np.ndarray, name: str, modality: str, photometric: str) -> ImageArray:
    """Last gate: the shapes the transforms accept, and finite values only."""
    pixels = np.asarray(arr, dtype=np.float32)
    colour = photometric == "RGB"
    ok = (pixels.ndim == 3 and pixels.shape[-1] == 3) if colour else pixels.ndim in (2, 3)
    if not ok or min(pixels.shape) < 1:
        raise CaseReadError(name, f"unsupported pixel array shape {pixels.shape} ({photometric})")
    if not np.isfinite(pixels).all():
        raise CaseReadError(name, "pixel data contains NaN or infinite values")
    return ImageArray(pixels=pixels, modality=modality, photometric=photometric)


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
