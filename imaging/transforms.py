"""Pixel transforms: decoded image -> fixed-size channel stack in [0, 1].

Kept apart from reading (runner/data.py) the way MONAI keeps ImageReader apart
from ScaleIntensityRange: reading knows file formats and physical units (HU),
these functions know only arrays, so they are testable on hand-made values
and reusable for previews. numpy and Pillow only: they run once per case at
cache-build time, never per training step. The runner builds its cache with the
8-bit path (``preprocess_uint8``), held to ``to_uint8(preprocess(...))`` by tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from schemas.spec import Preprocessing, Window

COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR"})
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
Resize = Callable[[np.ndarray, int], np.ndarray]
"""Square (C, H, W) uint8 -> (C, size, size) uint8: ``resize_uint8`` or a faster equal."""


@dataclass(frozen=True)
class Stored:
    """The integer values a grayscale image was decoded to, and the linear rescale that
    made its physical ``pixels`` of them: ``pixels == physical(values)``, element for
    element. An 8-bit windowing can then map each distinct value once, through a lookup
    table, instead of every pixel (runner/prep_uint8.py: the first epoch, issue 16)."""

    values: np.ndarray
    slope: float | None = None
    intercept: float | None = None

    def physical(self, values: np.ndarray) -> np.ndarray:
        """``values`` (these, or a table of others) in float32 physical units: the rescale
        in float32, in place (pydicom's ``apply_rescale`` makes float64, twice the memory
        the decode budget counts), the one definition the reader and the tables share."""
        out = values.astype(np.float32)
        if self.slope is not None and self.slope != 1.0:
            out *= np.float32(self.slope)
        if self.intercept is not None and self.intercept != 0.0:
            out += np.float32(self.intercept)
        return out


@dataclass(frozen=True)
class ImageArray:
    """A decoded image in physical units, before any display or model mapping.

    ``pixels`` is (H, W) for grayscale, (H, W, 3) for colour (``photometric``
    "RGB"), or (F, H, W) for a multi-frame grayscale DICOM. CT values are HU.
    MONOCHROME1 is recorded, not inverted: inversion is a display decision.
    """

    pixels: np.ndarray
    modality: str
    photometric: str
    stored: Stored | None = field(default=None, repr=False, compare=False)
    """The integer values ``pixels`` were rescaled from, when the reader had them."""

    @property
    def is_colour(self) -> bool:
        return self.photometric in COLOUR

    def frame(self) -> np.ndarray:
        """One 2-D (or H, W, 3) image: the middle frame of a multi-frame stack."""
        if not self.is_colour and self.pixels.ndim == 3:
            return np.asarray(self.pixels[self.pixels.shape[0] // 2])
        return self.pixels


def window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window/level to [0, 1] (DICOM's plain linear form, no -0.5 offsets)."""
    if width <= 0:
        raise ValueError("window width must be > 0")
    low = center - width / 2.0
    out = (hu.astype(np.float32) - np.float32(low)) / np.float32(width)
    return np.clip(out, 0.0, 1.0)


def minmax(pixels: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the image's own range; a flat image becomes all zeros."""
    arr = pixels.astype(np.float32)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros_like(arr)
    return (arr - lo) / (hi - lo)


def intensity_channels(image: ImageArray, windows: Sequence[Window]) -> np.ndarray:
    """(C, H, W) float32 in [0, 1]: one channel per window, or the image's own range.

    Windows apply to grayscale only (they are defined in HU or detector units);
    a colour image keeps its three channels, each scaled by its own range
    across all channels so hue is preserved.
    """
    pixels = image.frame()
    if image.is_colour:
        return minmax(pixels).transpose(2, 0, 1)
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
    if windows:
        stack = np.stack([window(pixels, w.center, w.width) for w in windows])
    else:
        stack = minmax(pixels)[None]
    if image.photometric == "MONOCHROME1":
        stack = 1.0 - stack
    return stack


def pad_square(stack: np.ndarray) -> np.ndarray:
    """Pad (C, H, W) with zeros to square, centred, so resizing keeps proportions."""
    _, h, w = stack.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros((stack.shape[0], side, side), dtype=stack.dtype)
    out[:, top : top + h, left : left + w] = stack
    return out


def resize(stack: np.ndarray, size: int) -> np.ndarray:
    """Square (C, H, W) -> (C, size, size); Pillow's filters antialias when shrinking."""
    if stack.shape[1:] == (size, size):
        return stack.astype(np.float32, copy=False)
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(p, dtype=np.float32)).resize(
                (size, size), Image.Resampling.BILINEAR
            )
        )
        for p in stack
    ]
    return np.clip(np.stack(planes), 0.0, 1.0)


def match_channels(stack: np.ndarray, channels: int) -> np.ndarray:
    """Repeat or reduce (C, H, W) to ``channels`` planes.

    One plane is repeated (grayscale into a 3-channel network); colour into
    one channel is luminance; otherwise planes cycle or the first are kept.
    """
    c = stack.shape[0]
    if c == channels:
        return stack
    if c == 3 and channels == 1:
        return np.tensordot(_LUMA, stack, axes=1)[None].astype(np.float32)
    index = [i % c for i in range(channels)]
    return stack[index]


def preprocess(image: ImageArray, prep: Preprocessing) -> np.ndarray:
    """Decoded image -> (channels, size, size) float32 in [0, 1], ready to cache."""
    stack = intensity_channels(image, prep.windows)
    stack = resize(pad_square(stack), prep.image_size)
    return match_channels(stack, prep.channels)


def preprocess_uint8(image: ImageArray, prep: Preprocessing,
                     resize: Resize | None = None) -> np.ndarray:
    """``to_uint8(preprocess(image, prep))`` within one grey level, in about a third of the
    time with torch's resize (two thirds with Pillow's).

    The cache stores uint8, so a grayscale image is windowed straight to uint8 (all
    windows in one broadcast, into the zero-padded square) and resized as 8-bit
    planes, three to a Pillow RGB image: quantising before the antialiasing filter
    instead of after moves a value by at most one level. Colour images, and three
    windows mixed down to one luminance channel, take the float path. ``resize``:
    ``resize_uint8`` unless the caller has a faster equal (the runner: torch's).
    """
    pixels = image.frame()
    planes = len(prep.windows) or 1
    if image.is_colour or (planes == 3 and prep.channels == 1):
        return to_uint8(preprocess(image, prep))
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
    low, scale = linear_maps(pixels, prep.windows)
    square = quantise_square(pixels, low, scale, invert=image.photometric == "MONOCHROME1")
    return match_channels((resize or resize_uint8)(square, prep.image_size), prep.channels)


def linear_maps(pixels: np.ndarray, windows: Sequence[Window]) -> tuple[np.ndarray, np.ndarray]:
    """Per channel ``(low, scale)``: ``(value - low) * scale`` is the channel in 0..255
    before clipping; each window, or the image's own range (a flat image maps to 0)."""
    if windows:
        if any(w.width <= 0 for w in windows):
            raise ValueError("window width must be > 0")
        width = np.array([w.width for w in windows], np.float64)
        low = np.array([w.center for w in windows], np.float64) - width / 2.0
        return low.astype(np.float32), (255.0 / width).astype(np.float32)
    lo, hi = float(np.min(pixels)), float(np.max(pixels))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(1, np.float32), np.zeros(1, np.float32)
    return np.array([lo], np.float32), np.array([255.0 / (hi - lo)], np.float32)


def quantised(pixels: np.ndarray, low: np.ndarray, scale: np.ndarray, *,
                invert: bool = False) -> np.ndarray:
    """(C, *pixels.shape) float32: each channel's linear map of ``pixels``, clipped to
    0..255 and rounded (``invert``: MONOCHROME1). One pass per step, all channels at
    once; the one definition for an image and for a lookup table's entries, so both
    give the same numbers."""
    at = (slice(None),) + (None,) * pixels.ndim
    values = pixels[None] - low[at]
    values *= scale[at]
    np.clip(values, 0.0, 255.0, out=values)
    if invert:
        np.subtract(255.0, values, out=values)
    np.rint(values, out=values)
    return values


def quantise_square(pixels: np.ndarray, low: np.ndarray, scale: np.ndarray, *,
                    invert: bool = False) -> np.ndarray:
    """(C, side, side) uint8: ``quantised`` of a 2-D image, centred on a zero square as
    ``pad_square`` does."""
    h, w = pixels.shape
    values = quantised(pixels, low, scale, invert=invert)
    side = max(h, w)
    if h == w:
        return values.astype(np.uint8)
    out = np.zeros((len(low), side, side), np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[:, top : top + h, left : left + w] = values
    return out


def resize_uint8(planes: np.ndarray, size: int) -> np.ndarray:
    """Square (C, H, W) uint8 -> (C, size, size) with ``resize``'s filter, three planes
    to one Pillow RGB image (its 8-bit bands resample independently)."""
    if planes.shape[1:] == (size, size):
        return planes
    out = np.empty((planes.shape[0], size, size), np.uint8)
    for start in range(0, planes.shape[0], 3):
        group = [Image.fromarray(np.ascontiguousarray(p)) for p in planes[start : start + 3]]
        if len(group) == 3:
            rgb = Image.merge("RGB", group).resize((size, size), Image.Resampling.BILINEAR)
            out[start : start + 3] = np.asarray(rgb).transpose(2, 0, 1)
            continue
        for i, plane in enumerate(group):
            out[start + i] = np.asarray(plane.resize((size, size), Image.Resampling.BILINEAR))
    return out


def to_uint8(stack: np.ndarray) -> np.ndarray:
    """Quantise [0, 1] to uint8 for the cache: 4x smaller, ample for 8-bit-deep windows."""
    return np.round(np.clip(stack, 0.0, 1.0) * 255.0).astype(np.uint8)


def normalise(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(…, C, H, W) in [0, 1] -> standardised with per-channel mean/std."""
    c = x.shape[-3]
    m = np.asarray(per_channel(mean, c), dtype=np.float32).reshape(c, 1, 1)
    s = np.asarray(per_channel(std, c), dtype=np.float32).reshape(c, 1, 1)
    return (x.astype(np.float32) - m) / s


def per_channel(values: Sequence[float], channels: int) -> list[float]:
    """Accept one value for all channels or exactly one per channel."""
    if len(values) == channels:
        return list(values)
    if len(values) == 1:
        return list(values) * channels
    raise ValueError(f"expected 1 or {channels} values, got {len(values)}")
