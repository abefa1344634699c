"""The SIIM-ACR pneumothorax layout: ``ImageId,EncodedPixels`` run-length CSV, DICOM images.

``EncodedPixels`` is ``-1`` for an image without pneumothorax, else pairs of
(start, length) over the image flattened column by column (top to bottom,
then left to right). SIIM's training CSV uses *relative* starts (each counted
from the end of the previous run, 0-based); the later "standard" form uses
absolute 1-based starts (``--rle absolute``). Several rows for one image are
united. Images are ``<ImageId>.dcm`` anywhere under the source (SIIM nests
them by study and series). ``annotation_type`` ``single_label`` turns the
masks into the pneumothorax preset's ``ptx``/``normal`` labels instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from handlers.datasets_import.base import (
    Candidate,
    ImportAbort,
    ImportOptions,
    MaskError,
    Parsed,
    Problem,
    case_id_from,
    column,
    index_files,
    labels_file,
    looks_like_image,
    read_csv,
    rel,
)
from schemas.dataset_import import RleLayout

NO_MASK = "-1"


@dataclass
class RleMask:
    encodings: list[str]
    layout: RleLayout
    source: str

    def load(self, rows: int, cols: int, n_classes: int) -> np.ndarray:
        flat = np.zeros(rows * cols + 1, dtype=np.int32)
        for text in self.encodings:
            starts, ends = decode_runs(text, self.layout, rows * cols)
            np.add.at(flat, starts, 1)
            np.add.at(flat, ends, -1)
        mask = np.cumsum(flat[:-1]) > 0
        return mask.reshape(cols, rows).T.astype(np.uint8)


def decode_runs(text: str, layout: RleLayout, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of each run as 0-based flat indices, checked to fit ``size`` pixels."""
    try:
        values = np.array([int(t) for t in text.split()], dtype=np.int64)
    except ValueError as exc:
        raise MaskError("invalid_mask", f"run-length text is not integers ({exc})") from exc
    if values.size % 2:
        raise MaskError("invalid_mask", "run-length text has an odd number of values")
    starts, lengths = values[0::2], values[1::2]
    if (lengths < 0).any() or (starts < 0).any():
        raise MaskError("invalid_mask", "run-length text has negative values")
    if layout == "relative":
        starts = np.cumsum(starts) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    else:
        if (starts < 1).any():
            raise MaskError("invalid_mask", "absolute run-length starts are 1-based")
        starts = starts - 1
    ends = starts + lengths
    if ends.size and int(ends.max()) > size:
        raise MaskError("mask_size", f"runs reach pixel {int(ends.max())} but the image has "
                        f"only {size} pixels")
    return starts, ends


def parse(root: Path, opts: ImportOptions) -> Parsed:
    if opts.annotation_type not in (None, "masks", "single_label"):
        raise ImportAbort(Problem("invalid_option", "the SIIM layout gives masks or "
                                  "single_label (ptx/normal)"))
    as_labels = opts.annotation_type == "single_label"
    classes = list(opts.classes) if opts.classes else (
        ["ptx", "normal"] if as_labels else ["pneumothorax"])
    if len(classes) != (2 if as_labels else 1):
        raise ImportAbort(Problem("invalid_option", f"classes {classes}: the SIIM layout has "
                                  + ("two labels (finding, normal)" if as_labels else "one class")))
    path = labels_file(root, opts, (".csv",), prefer="train")
    header, rows = read_csv(path)
    id_col, rle_col = column(header, "imageid", "image_id"), column(header, "encodedpixels")
    if id_col is None or rle_col is None:
        raise ImportAbort(Problem("invalid_labels_file",
                                  f"{path.name}: expected columns ImageId,EncodedPixels"))
    runs: dict[str, list[str]] = {}
    first: dict[str, str] = {}
    problems: list[Problem] = []
    for line, cells in rows:
        if len(cells) != len(header):
            problems.append(Problem("invalid_row", "row is missing cells",
                                    source=f"{path.name}:{line}"))
            continue
        image = cells[id_col]
        first.setdefault(image, f"{path.name}:{line}")
        runs.setdefault(image, [])
        if cells[rle_col] != NO_MASK:
            runs[image].append(cells[rle_col])
    files = index_files(root)
    candidates = []
    for image, encodings in runs.items():
        cand = _candidate(image, encodings, files, first[image], opts, classes, problems)
        if cand is not None:
            candidates.append(cand)
    for paths in files.values():
        for p in paths:
            if p.suffix.lower() == ".dcm" and p.stem not in runs and looks_like_image(p):
                problems.append(Problem("missing_label", "image has no row in the labels file",
                                        case_id_from(p.stem) or None, rel(root, p)))
    return Parsed("single_label" if as_labels else "masks", classes, candidates, problems)


def _candidate(image: str, encodings: list[str], files: dict[str, list[Path]], src: str,
               opts: ImportOptions, classes: list[str], problems: list[Problem]
               ) -> Candidate | None:
    case_id = case_id_from(image)
    hits = files.get(f"{image}.dcm", [])
    if len(hits) != 1:
        what = "not found" if not hits else f"found {len(hits)} times"
        problems.append(Problem("missing_image", f"{image}.dcm {what} in the source", case_id,
                                src))
        return None
    if opts.annotation_type == "single_label":
        return Candidate(case_id=case_id, images=hits, source=src,
                         labels=[classes[0] if encodings else classes[1]])
    return Candidate(case_id=case_id, images=hits, source=src,
                     mask=RleMask(encodings, opts.rle, src))
