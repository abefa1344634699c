"""Detection boxes and segmentation masks, moved into the preprocessed frame.

``imaging.transforms.preprocess`` pads an image to a centred square
and resizes it; a box or a mask must go through the very same mapping or the
model learns shifted targets. These functions are that mapping, numpy and
Pillow only, run once per case when the cache is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from imaging.reader import CaseReadError
from schemas.dataset import Box

MASK_MODES = frozenset({"L", "P", "I", "I;16", "1"})


def square_frame(h: int, w: int, size: int) -> tuple[float, float, float]:
    """(left pad, top pad, scale) of ``pad_square`` + resize to ``size``."""
    side = max(h, w)
    return float((side - w) // 2), float((side - h) // 2), size / side


def scale_boxes(boxes: Sequence[Box], classes: Sequence[str], hw: tuple[int, int],
                size: int) -> np.ndarray:
    """(k, 5) float32 rows ``x1, y1, x2, y2, label`` in the preprocessed frame.

    Labels are 1-based: 0 is the detectors' background class. Boxes are
    clipped to the image; one that collapses to nothing is dropped, since a
    zero-area box makes torchvision's detectors raise.
    """
    index = {c: i + 1 for i, c in enumerate(classes)}
    left, top, scale = square_frame(hw[0], hw[1], size)
    rows = []
    for b in boxes:
        x1 = min(max((b.x_min + left) * scale, 0.0), size)
        y1 = min(max((b.y_min + top) * scale, 0.0), size)
        x2 = min(max((b.x_max + left) * scale, 0.0), size)
        y2 = min(max((b.y_max + top) * scale, 0.0), size)
        if x2 - x1 >= 1.0 and y2 - y1 >= 1.0:
            rows.append((x1, y1, x2, y2, float(index[b.label])))
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


def read_mask(path: Path, hw: tuple[int, int], size: int, n_classes: int,
              label: str) -> np.ndarray:
    """Class-index PNG -> (size, size) uint8, padded and resized like its image.

    Nearest-neighbour resizing keeps every pixel a valid class index; a mask
    of another size than its image, a colour PNG or an index past the class
    list is a per-case error, never a silently wrong target.
    """
    try:
        with Image.open(path) as img:
            if img.mode not in MASK_MODES:
                raise CaseReadError(label, f"mask is {img.mode}; need a single-channel "
                                           "PNG of class indices")
            arr = np.asarray(img).astype(np.int64)
    except CaseReadError:
        raise
    except Exception as exc:
        raise CaseReadError(label, f"mask unreadable: {exc}") from exc
    if arr.shape != hw:
        raise CaseReadError(label, f"mask is {arr.shape[1]}x{arr.shape[0]}, "
                                   f"its image {hw[1]}x{hw[0]}")
    if arr.size and (arr.min() < 0 or arr.max() > n_classes):
        raise CaseReadError(label, f"mask holds class index {int(arr.max())}; "
                                   f"the dataset has {n_classes} classes")
    side = max(hw)
    top, left = (side - hw[0]) // 2, (side - hw[1]) // 2
    square = np.zeros((side, side), dtype=np.uint8)
    square[top:top + hw[0], left:left + hw[1]] = arr.astype(np.uint8)
    if side == size:
        return square
    resized = Image.fromarray(square).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(resized, dtype=np.uint8)


def presence_from_boxes(boxes: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """(N, K) multi-hot of the classes each case shows: what splits balance on."""
    y = np.zeros((len(boxes), n_classes), dtype=np.float32)
    for i, rows in enumerate(boxes):
        labels = rows[:, 4].astype(np.int64) - 1
        y[i, labels[labels >= 0]] = 1.0
    return y


def presence_from_masks(masks: np.ndarray, n_classes: int) -> np.ndarray:
    y = np.zeros((masks.shape[0], n_classes), dtype=np.float32)
    for i in range(masks.shape[0]):
        counts = np.bincount(np.asarray(masks[i]).ravel(), minlength=n_classes + 1)
        y[i] = (counts[1:n_classes + 1] > 0).astype(np.float32)
    return y


def pack_boxes(boxes: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged per-case boxes as one (M, 5) array plus (N + 1) offsets, for ``.npy``."""
    offsets = np.zeros(len(boxes) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in boxes])
    flat = np.concatenate(list(boxes)) if boxes else np.zeros((0, 5), dtype=np.float32)
    return flat.astype(np.float32).reshape(-1, 5), offsets


def unpack_boxes(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(flat[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)]
