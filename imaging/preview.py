"""Case previews: one image rendered to PNG the way a radiologist would look at it.

CT is windowed in HU (named presets or the file's own window), MONOCHROME1 is
inverted so bone is white, and the case's boxes and mask are drawn over it.
The intensity mapping is ``transforms.intensity_channels``, the same the
runner trains on, so a preview shows what the model will see. numpy + Pillow
only: the gateway renders previews and must not import torch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from PIL import Image, ImageDraw

from imaging.budget import DecodeBudget, default_budget
from imaging.palette import class_colour
from imaging.reader import (
    MAX_IMAGE_BYTES,
    CaseReadError,
    ImageHeader,
    read_header,
    read_image,
)
from imaging.series import body_region
from imaging.transforms import ImageArray, intensity_channels, minmax, to_uint8
from imaging.windows import REGION_WINDOWS, WINDOW_PRESETS, auto_pixels
from schemas.dataset import Box
from schemas.spec import Window

WindowName = Literal["auto", "brain", "subdural", "bone", "lung", "mediastinal", "pe", "abdomen",
                     "liver"]
WINDOW_NAMES: tuple[str, ...] = get_args(WindowName)
WINDOWS: dict[str, tuple[float, float]] = {
    name: (w.center, w.width) for name, w in WINDOW_PRESETS.items()}
"""(center, width) in HU of each preset (imaging.windows), as previews use them."""
MIN_SIZE, MAX_SIZE, DEFAULT_SIZE = 32, 1024, 512
MASK_ALPHA = 0.4


def colour(index: int) -> tuple[int, int, int]:
    """Colour of class ``index`` (0-based), the same in boxes, masks and prediction plots."""
    return class_colour(index)


def choose_window(name: str, image: ImageArray,
                  header: ImageHeader | None) -> tuple[float, float] | None:
    """(center, width) to apply, or None for the image's own min-max range.

    ``auto``: the DICOM's WindowCenter/Width if it has them (``render_files`` applies
    the file's whole VOI transform first, see ``imaging.windows.auto_pixels``), else for
    CT the first window of its body region, or the soft-tissue window when the body part
    is unknown (never the brain window by default), else min-max. A named preset applies
    as asked.
    """
    if name != "auto":
        return WINDOWS[name]
    if header is not None and header.window_center is not None \
            and header.window_width is not None and header.window_width > 0:
        return header.window_center, header.window_width
    if image.modality.upper() == "CT":
        region = body_region(header.geometry) if header and header.geometry else None
        first = REGION_WINDOWS[region][0] if region else WINDOW_PRESETS["abdomen"]
        return first.center, first.width
    return None


def display_pixels(image: ImageArray, window: tuple[float, float] | None) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 as displayed: windowed, MONOCHROME1 inverted."""
    if image.is_colour:
        return to_uint8(minmax(image.frame()))
    windows = [Window(name="preview", center=window[0], width=window[1])] if window else []
    return to_uint8(intensity_channels(image, windows)[0])


def render_preview(image: ImageArray, *, window: str = "auto", size: int = DEFAULT_SIZE,
                   header: ImageHeader | None = None, boxes: Sequence[Box] = (),
                   mask: np.ndarray | None = None, classes: Sequence[str] = (),
                   display: np.ndarray | None = None) -> bytes:
    """PNG bytes, the longest side ``size`` pixels, overlays drawn in class colours;
    ``display`` ([0, 1] pixels) replaces the windowing when given."""
    if window not in WINDOW_NAMES:
        raise ValueError(f"unknown window {window!r}; one of {', '.join(WINDOW_NAMES)}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE}")
    pixels = (to_uint8(display) if display is not None
              else display_pixels(image, choose_window(window, image, header)))
    h, w = pixels.shape[:2]
    scale = size / max(h, w)
    out_w, out_h = max(1, round(w * scale)), max(1, round(h * scale))
    im = Image.fromarray(pixels).resize((out_w, out_h), Image.Resampling.LANCZOS).convert("RGB")
    if mask is not None:
        im = _overlay_mask(im, mask)
    if boxes:
        _draw_boxes(im, boxes, classes, scale)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _overlay_mask(im: Image.Image, mask: np.ndarray) -> Image.Image:
    """Tint each class's pixels and draw its outline in full colour."""
    labels = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(
        im.size, Image.Resampling.NEAREST))
    rgb = np.asarray(im, dtype=np.float32).copy()
    edges = np.zeros(labels.shape, dtype=bool)
    vertical, horizontal = labels[:-1, :] != labels[1:, :], labels[:, :-1] != labels[:, 1:]
    edges[:-1, :] |= vertical
    edges[1:, :] |= vertical
    edges[:, :-1] |= horizontal
    edges[:, 1:] |= horizontal
    for value in np.unique(labels):
        if value == 0:
            continue
        inside = labels == value
        tint = np.asarray(colour(int(value) - 1), dtype=np.float32)
        rgb[inside] = (1 - MASK_ALPHA) * rgb[inside] + MASK_ALPHA * tint
        rgb[inside & edges] = tint
    return Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8))


def _draw_boxes(im: Image.Image, boxes: Sequence[Box], classes: Sequence[str],
                scale: float) -> None:
    draw = ImageDraw.Draw(im)
    line = max(1, round(max(im.size) / 256))
    for box in boxes:
        idx = classes.index(box.label) if box.label in classes else 0
        xy = [box.x_min * scale, box.y_min * scale,
              max(box.x_min * scale, box.x_max * scale - 1),
              max(box.y_min * scale, box.y_max * scale - 1)]
        draw.rectangle(xy, outline=colour(idx), width=line)
        draw.text((xy[0] + line + 1, xy[1] + line), box.label, fill=colour(idx))


def render_files(image_path: Path, *, window: str = "auto", size: int = DEFAULT_SIZE,
                 mask_path: Path | None = None, boxes: Sequence[Box] = (),
                 classes: Sequence[str] = (), max_bytes: int = MAX_IMAGE_BYTES,
                 source: str | None = None, budget: DecodeBudget | None = None) -> bytes:
    """Read an image (and its mask) from disk and render it; errors are CaseReadError.

    The decode's memory reservation (imaging/budget.py) is held until the PNG is
    made: the estimate counts the windowing and resizing too."""
    budget = budget or default_budget()
    with budget.scope():
        return _render_files(image_path, window=window, size=size, mask_path=mask_path,
                             boxes=boxes, classes=classes, max_bytes=max_bytes, source=source,
                             budget=budget)


def _render_files(image_path: Path, *, window: str, size: int, mask_path: Path | None,
                  boxes: Sequence[Box], classes: Sequence[str], max_bytes: int,
                  source: str | None, budget: DecodeBudget) -> bytes:
    image = read_image(image_path, max_bytes=max_bytes, source=source, budget=budget)
    try:  # only for the file's own window: a header quirk must not block the preview
        header: ImageHeader | None = read_header(image_path, max_bytes=max_bytes, source=source)
    except CaseReadError:
        header = None
    mask = None
    if mask_path is not None:
        try:
            with Image.open(mask_path) as m:
                if m.size[0] * m.size[1] > max_bytes:
                    raise CaseReadError(source or mask_path.name, "mask is too large",
                                        "too_large")
                mask = np.asarray(m.convert("L"))
        except CaseReadError:
            raise
        except Exception as exc:
            raise CaseReadError(source or mask_path.name,
                                f"mask is not a readable image ({exc})") from exc
    display = auto_pixels(image_path, image) if window == "auto" else None
    return render_preview(image, window=window, size=size, header=header, boxes=boxes,
                          mask=mask, classes=classes, display=display)
