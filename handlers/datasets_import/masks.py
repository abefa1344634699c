"""Segmentation masks: a folder of mask images beside the images, matched by name.

Layout: ``images/<name>.<ext>`` and ``masks/<name>.png``. A mask holds class
indices (0 background, i = ``classes[i-1]``); with one class, a 0/255 mask is
read as binary. An optional top-level CSV (``case_id`` or ``image``, plus
``patient_id`` and ``split``) adds patients and splits. Masks are decoded in
``validate`` against their image's header: size and values are checked there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from handlers.datasets_import.base import (
    SPLIT_ALIASES,
    Candidate,
    ImportAbort,
    ImportOptions,
    MaskError,
    Parsed,
    Problem,
    case_id_from,
    column,
    inside,
    looks_like_image,
    read_csv,
    rel,
)

_MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")


@dataclass
class MaskFile:
    """A mask image; ``load`` refuses the wrong size before decoding it."""

    path: Path
    source: str

    def load(self, rows: int, cols: int, n_classes: int) -> np.ndarray:
        try:
            with Image.open(self.path) as im:
                if im.size != (cols, rows):
                    raise MaskError("mask_size", f"mask is {im.size[1]}x{im.size[0]} (rows x "
                                    f"columns) but its image is {rows}x{cols}")
                if im.mode not in _MASK_MODES:
                    raise MaskError("invalid_mask", f"mask mode {im.mode} is not a single "
                                    "channel of class indices")
                arr = np.asarray(im)
        except MaskError:
            raise
        except Exception as exc:
            raise MaskError("unreadable_mask", f"mask is not a readable image ({exc})") from exc
        return class_indices(arr, n_classes)


def class_indices(arr: np.ndarray, n_classes: int) -> np.ndarray:
    """Check mask values against the classes; a binary 0/255 mask means class 1."""
    values = np.unique(arr)
    if arr.dtype == bool or (n_classes == 1 and set(values.tolist()) <= {0, 255}):
        return (arr > 0).astype(np.uint8)
    bad = values[(values > n_classes) | (values < 0)]
    if bad.size:
        raise MaskError("unknown_label", f"mask values {bad[:5].tolist()} have no class "
                        f"(there are {n_classes} classes)")
    return arr.astype(np.uint8)


def parse(root: Path, opts: ImportOptions) -> Parsed:
    if opts.annotation_type not in (None, "masks"):
        raise ImportAbort(Problem("invalid_option", "mask images describe masks"))
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise ImportAbort(Problem("invalid_layout", "expected folders images/ and masks/ "
                                  "in the source"))
    classes = list(opts.classes) if opts.classes else ["foreground"]
    if len(classes) > 255:
        raise ImportAbort(Problem("invalid_option", "at most 255 mask classes"))
    masks = {p.stem: p for p in sorted(masks_dir.rglob("*")) if p.is_file()}
    meta = _metadata(root, opts)
    problems: list[Problem] = []
    candidates: list[Candidate] = []
    for image in sorted(p for p in images_dir.rglob("*") if p.is_file() and looks_like_image(p)):
        src = rel(root, image)
        case_id = case_id_from(image.stem)
        mask = masks.pop(image.stem, None)
        if mask is None:
            problems.append(Problem("missing_label", f"no mask masks/{image.stem}.*", case_id,
                                    src))
            continue
        patient, split = meta.get(case_id, (None, None))
        candidates.append(Candidate(case_id=case_id, images=[image], source=src,
                                    mask=MaskFile(mask, rel(root, mask)), patient_id=patient,
                                    split=split))
    for stem, mask in masks.items():
        problems.append(Problem("missing_image", f"mask has no image images/{stem}.*",
                                case_id_from(stem), rel(root, mask)))
    return Parsed("masks", classes, candidates, problems)


def _metadata(root: Path, opts: ImportOptions) -> dict[str, tuple[str | None, str | None]]:
    """case id -> (patient id, split) from an optional top-level CSV."""
    csvs = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if opts.labels:
        named = inside(root, opts.labels)
        csvs = [named] if named is not None and named.is_file() else []
    if len(csvs) != 1:
        return {}
    header, rows = read_csv(csvs[0])
    key = column(header, "case_id", "id", "image", "file", "filename")
    patient, split = column(header, "patient_id", "patient"), column(header, "split")
    if key is None:
        raise ImportAbort(Problem("invalid_labels_file", f"{csvs[0].name}: no case_id column"))
    out: dict[str, tuple[str | None, str | None]] = {}
    for _, cells in rows:
        if len(cells) == len(header):
            out[case_id_from(Path(cells[key]).stem)] = (
                (cells[patient] or None) if patient is not None else None,
                SPLIT_ALIASES.get(cells[split].lower()) if split is not None else None)
    return out
