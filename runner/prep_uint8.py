"""The first epoch's 8-bit preprocessing, on torch (issue 16): a case's cached pixels.

``imaging.transforms.preprocess_uint8`` windows every pixel of a grayscale image in
float32 (five passes over C planes) and resizes the planes. A decoded CT has a few
thousand distinct stored values, though, against 65k pixels and more: ``lut_uint8``
windows each distinct value once (a lookup table built by the same float32
operations, so every entry is the number the per-pixel path computes), gathers the
pixels' channels through it as four interleaved bytes, and hands those to torch's
antialiased resize in the channels-last layout its 8-bit kernel works in, which spares
it a transpose in and out. The result equals ``preprocess_uint8(image, prep,
resize=resize_torch)`` to the last bit (tests/unit/runner/test_prep_uint8.py);
anything the table does not fit (colour, multi-frame, no stored integers, more than
four channels, more distinct values than a quarter of the pixels) returns None and
takes that path.
"""

from __future__ import annotations

import numpy as np
import torch

from imaging.transforms import ImageArray, linear_maps, match_channels, quantised
from schemas.spec import Preprocessing

__all__ = ["lut_uint8", "resize_torch"]

PIXELS_PER_ENTRY = 4
"""A table is built only when the image has at least this many pixels per entry."""


def resize_torch(planes: np.ndarray, size: int) -> np.ndarray:
    """``imaging.transforms.resize_uint8`` through torch's 8-bit antialiased bilinear
    kernel: the same filter (equal for integer factors, within one level otherwise),
    several times faster than Pillow's. ``planes`` may be a channels-last view (the
    kernel's own layout: no copy in); the result is then one too."""
    if planes.shape[1:] == (size, size):
        return planes
    out = torch.nn.functional.interpolate(torch.from_numpy(planes)[None], size=(size, size),
                                          mode="bilinear", antialias=True)
    return out[0].numpy()


def lut_uint8(image: ImageArray, prep: Preprocessing) -> np.ndarray | None:
    """(channels, size, size) uint8, equal to ``preprocess_uint8(image, prep,
    resize=resize_torch)``, through a lookup table of the stored values; None when the
    image does not suit one."""
    stored, planes = image.stored, len(prep.windows) or 1
    if (stored is None or image.is_colour or image.pixels.ndim != 2
            or stored.values.shape != image.pixels.shape or planes > 4
            or (planes == 3 and prep.channels == 1)):  # luminance: the float path
        return None
    values = stored.values
    lo, hi = int(values.min()), int(values.max())
    if (hi - lo + 1) * PIXELS_PER_ENTRY > values.size:
        return None
    low, scale = linear_maps(image.pixels, prep.windows)
    entries = np.arange(lo, hi + 1).astype(values.dtype)
    table = quantised(stored.physical(entries), low, scale,
                      invert=image.photometric == "MONOCHROME1")
    square = _gathered(values, lo, table)
    return match_channels(resize_torch(square, prep.image_size)[:planes], prep.channels)


def _gathered(values: np.ndarray, lo: int, table: np.ndarray) -> np.ndarray:
    """(4, side, side) uint8, a channels-last view: each pixel's ``table`` column (its
    channels; the rest 0) as one 32-bit word, centred on a zero square as
    ``imaging.transforms.pad_square`` pads."""
    words = np.zeros((table.shape[1], 4), np.uint8)
    words[:, :table.shape[0]] = table.T  # rounded 0..255: exact, as ``astype`` in the image path
    index = values.astype(np.intp)
    index -= lo
    packed = np.take(words.view(np.uint32)[:, 0], index, mode="clip")
    h, w = values.shape
    if h != w:
        side = max(h, w)
        square = np.zeros((side, side), np.uint32)
        top, left = (side - h) // 2, (side - w) // 2
        square[top : top + h, left : left + w] = packed
        packed = square
    side = packed.shape[0]
    return packed.view(np.uint8).reshape(side, side, 4).transpose(2, 0, 1)
