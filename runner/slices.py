"""2.5D input: neighbour slices as channels (issue 15 item 2).

With ``preprocessing.slices == "adjacent"`` a case's input is the previous,
current and next slice of its series, each in the first window (min-max
without windows), as three channels: the "2.5D" input of the top RSNA 2019
hemorrhage and 2020 pulmonary-embolism solutions. The neighbours come from

* the manifest's series table for a slice case (``Case.series``): the cases
  before and after it in anatomical order;
* the case's own stack for a whole-series case (``images`` are in order);
* the frames of a multi-frame image, ordered by their per-frame positions
  (``anatomical``, which also makes the "current" input the volume's middle frame).

At the ends of a series the edge slice repeats. Decoding happens once, at
cache-build time (runner/data.py); the loader serves the cached stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imaging.reader import read_header
from imaging.series import SliceGeometry, neighbours, order_frames
from imaging.transforms import (
    ImageArray,
    Resize,
    linear_maps,
    match_channels,
    minmax,
    pad_square,
    quantise_square,
    resize,
    resize_uint8,
    to_uint8,
    window,
)
from schemas.dataset import Case, DatasetManifest
from schemas.spec import Preprocessing

__all__ = ["adjacent_stack", "adjacent_uint8", "anatomical", "frame_planes", "neighbour_keys"]


def _middle(case: Case) -> str:
    return case.images[len(case.images) // 2]


def neighbour_keys(manifest: DatasetManifest) -> dict[str, list[str]]:
    """case id -> image keys of its previous, current and next slice (one key when the
    case is a single image: its frames, if any, are the neighbours)."""
    by_id = {c.case_id: c for c in manifest.cases}
    index = {cid: (key, i) for key, s in manifest.series.items()
             for i, cid in enumerate(s.cases)}
    out: dict[str, list[str]] = {}
    for case in manifest.cases:
        found = index.get(case.case_id) if case.series else None
        if found is not None:
            order = manifest.series[found[0]].cases
            out[case.case_id] = [_middle(by_id[order[j]])
                                 for j in neighbours(found[1], len(order))]
        elif len(case.images) > 1:
            mid = len(case.images) // 2
            out[case.case_id] = [case.images[j] for j in neighbours(mid, len(case.images))]
        else:
            out[case.case_id] = [case.images[0]]
    return out


def anatomical(image: ImageArray, path: Path) -> ImageArray:
    """A multi-frame grayscale image with its frames in anatomical order (the per-frame
    positions of its header, imaging/series.py), so its middle frame is the middle of
    the volume; any other image as it is."""
    pixels = image.pixels
    if image.is_colour or pixels.ndim != 3:
        return image
    try:
        geometry = read_header(path).geometry or SliceGeometry()
    except ValueError:  # the decode already succeeded: keep the stored order
        return image
    order = order_frames(geometry, pixels.shape[0]).order
    if order == list(range(pixels.shape[0])):
        return image
    return ImageArray(np.ascontiguousarray(pixels[order]), image.modality, image.photometric)


def frame_planes(image: ImageArray) -> list[np.ndarray]:
    """The previous, current and next frame of a multi-frame image (in the order it has:
    see ``anatomical``); a 2-D image thrice."""
    pixels = image.pixels
    if image.is_colour or pixels.ndim != 3:
        return [image.frame()] * 3
    mid = pixels.shape[0] // 2
    return [np.asarray(pixels[j]) for j in neighbours(mid, pixels.shape[0])]


def _planes(images: Sequence[ImageArray]) -> list[tuple[np.ndarray, bool]]:
    """The previous, current and next slice, each with whether it is MONOCHROME1."""
    if any(img.is_colour for img in images):
        raise ValueError("2.5D input needs grayscale slices; this case has colour images")
    if len(images) == 1:
        planes = frame_planes(images[0])
    else:
        planes = [img.frame() for img in images]
    owners = [*images, *[images[-1]] * 3][:len(planes)]
    for plane in planes:
        if plane.ndim != 2:
            raise ValueError(f"expected 2-D slices, got shape {plane.shape}")
    return [(p, img.photometric == "MONOCHROME1") for p, img in zip(planes, owners,
                                                                     strict=True)]


def adjacent_uint8(images: Sequence[ImageArray], prep: Preprocessing,
                   resize: Resize | None = None) -> np.ndarray:
    """``to_uint8(adjacent_stack(...))`` within one grey level, the way
    ``imaging.transforms.preprocess_uint8`` is: each slice windowed to 8 bits, the
    three resized together when they are the same size."""
    planes = _planes(images)
    if prep.channels == 1:  # three slices mixed down to luminance: the float path
        return to_uint8(adjacent_stack(images, prep))
    squares = []
    for plane, invert in planes:
        low, scale = linear_maps(plane, prep.windows[:1])
        squares.append(quantise_square(plane, low, scale, invert=invert)[0])
    fit = resize or resize_uint8
    if len({s.shape for s in squares}) == 1:
        stack = fit(np.stack(squares), prep.image_size)
    else:  # a neighbour of another size: each on its own, so they still line up
        stack = np.stack([fit(s[None], prep.image_size)[0] for s in squares])
    return match_channels(stack, prep.channels)


def adjacent_stack(images: Sequence[ImageArray], prep: Preprocessing) -> np.ndarray:
    """(channels, size, size) float32 in [0, 1]: previous/current/next in one window."""
    first = prep.windows[0] if prep.windows else None
    channels = []
    for plane, invert in _planes(images):
        ch = window(plane, first.center, first.width) if first else minmax(plane)
        if invert:
            ch = 1.0 - ch
        # each slice resized on its own: a neighbour of another size still lines up
        channels.append(resize(pad_square(ch[None]), prep.image_size)[0])
    return match_channels(np.stack(channels), prep.channels)
