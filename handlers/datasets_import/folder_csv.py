"""A folder of images plus a labels CSV, one row per case (single- or multi-label).

Two CSV layouts, told apart by the header:

* names: ``image,label`` (``label`` or ``labels``; several names joined by
  ``|`` or ``;``) - unknown names are caught against ``--classes``;
* one column per class: ``image,normal,finding`` with 0/1 cells.

Optional columns: ``case_id``, ``patient_id``, ``split``. The image cell is a
path relative to the source folder or a bare file name (found anywhere under
it); several images joined by ``|`` make a stack. Without an image column,
``case_id`` names the file (``<case_id>.dcm``/``.png``/``.jpg``).
"""

from __future__ import annotations

import re
from pathlib import Path

from handlers.datasets_import.base import (
    SPLIT_ALIASES,
    Candidate,
    ImportAbort,
    ImportOptions,
    Parsed,
    Problem,
    case_id_from,
    column,
    index_files,
    inside,
    labels_file,
    looks_like_image,
    read_csv,
    rel,
)
from schemas.dataset import AnnotationType

IMAGE_COLUMNS = ("image", "images", "file", "filename", "file_name", "path", "image_path")
ID_COLUMNS = ("case_id", "id", "image_id")
PATIENT_COLUMNS = ("patient_id", "patient", "patientid")
LABEL_COLUMNS = ("label", "labels", "class", "finding")
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", "")
"""Tried in this order when a ``case_id`` column names the file."""
_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}
_SEP = re.compile(r"[|;]")


def parse(root: Path, opts: ImportOptions) -> Parsed:
    if opts.annotation_type not in (None, "single_label", "multi_label"):
        raise ImportAbort(Problem("invalid_option", "a labels CSV describes single_label or "
                                  f"multi_label datasets, not {opts.annotation_type}"))
    path = labels_file(root, opts, (".csv",))
    header, rows = read_csv(path)
    cols = _Columns(header, path.name)
    files = index_files(root)
    problems: list[Problem] = []
    candidates: list[Candidate] = []
    referenced: set[Path] = {path}
    for line, cells in rows:
        src = f"{path.name}:{line}"
        if len(cells) != len(header):
            problems.append(Problem("invalid_row", f"row has {len(cells)} cells, the header "
                                    f"{len(header)}", source=src))
            continue
        cand = _candidate(root, files, cols, cells, src, problems, referenced)
        if cand is not None:
            candidates.append(cand)
    problems += _unlisted_images(root, files, referenced)
    classes = list(opts.classes) if opts.classes else cols.classes(candidates)
    annotation = opts.annotation_type or _infer_annotation(candidates)
    return Parsed(annotation, classes, candidates, problems)


class _Columns:
    """Which header column means what; the rest are classes (one-hot layout)."""

    def __init__(self, header: list[str], name: str) -> None:
        self.image = column(header, *IMAGE_COLUMNS)
        self.case_id = column(header, *ID_COLUMNS)
        self.patient = column(header, *PATIENT_COLUMNS)
        self.split = column(header, "split", "subset", "fold")
        self.label = column(header, *LABEL_COLUMNS)
        if self.image is None and self.case_id is None:
            raise ImportAbort(Problem("invalid_labels_file", f"{name}: no image column (one of "
                                      f"{', '.join(IMAGE_COLUMNS)}) and no case_id column"))
        known = {self.image, self.case_id, self.patient, self.split, self.label}
        self.one_hot = {i: h for i, h in enumerate(header) if i not in known and h}
        if self.label is None and not self.one_hot:
            raise ImportAbort(Problem("invalid_labels_file",
                                      f"{name}: no label column and no class columns"))

    def classes(self, candidates: list[Candidate]) -> list[str]:
        if self.label is None:
            return list(self.one_hot.values())
        return sorted({label for c in candidates for label in c.labels})


def _candidate(root: Path, files: dict[str, list[Path]], cols: _Columns, cells: list[str],
               src: str, problems: list[Problem], referenced: set[Path]) -> Candidate | None:
    raw_id = cells[cols.case_id] if cols.case_id is not None else ""
    refs = _SEP.split(cells[cols.image]) if cols.image is not None else [raw_id]
    refs = [r.strip() for r in refs if r.strip()]
    case_id = case_id_from(raw_id or Path(refs[0] if refs else "").stem)
    if not refs:
        problems.append(Problem("missing_image", "row names no image", case_id or None, src))
        return None
    images: list[Path] = []
    for ref in refs:
        found = _find(root, files, ref, by_id=cols.image is None)
        if found is None:
            problems.append(Problem("missing_image", f"image {ref!r} not found in the source",
                                    case_id or None, src))
        else:
            images.append(found)
            referenced.add(found)
    labels = _labels(cols, cells, case_id, src, problems)
    if not images or labels is None:
        return None
    patient = cells[cols.patient] if cols.patient is not None else ""
    split = cells[cols.split].lower() if cols.split is not None else ""
    if split and split not in SPLIT_ALIASES:
        problems.append(Problem("invalid_split", f"split {split!r} is not train, val or test",
                                case_id, src))
        return None
    return Candidate(case_id=case_id, images=images, source=src, labels=labels,
                     patient_id=patient or None, split=SPLIT_ALIASES.get(split))


def _find(root: Path, files: dict[str, list[Path]], ref: str, by_id: bool) -> Path | None:
    if by_id:
        for suffix in IMAGE_SUFFIXES:
            hits = files.get(ref + suffix, [])
            if len(hits) == 1:
                return hits[0]
        return None
    path = inside(root, ref)
    if path is not None and path.is_file():
        return path
    hits = files.get(Path(ref).name, []) if "/" not in ref else []
    return hits[0] if len(hits) == 1 else None


def _labels(cols: _Columns, cells: list[str], case_id: str, src: str,
            problems: list[Problem]) -> list[str] | None:
    if cols.label is not None:
        return [x.strip() for x in _SEP.split(cells[cols.label]) if x.strip()]
    labels: list[str] = []
    for i, name in cols.one_hot.items():
        value = cells[i].lower()
        if value in _TRUE:
            labels.append(name)
        elif value not in _FALSE:
            what = "is empty" if not value else f"is {cells[i]!r}, not 0 or 1"
            problems.append(Problem("missing_label", f"class {name!r} {what}", case_id, src))
            return None
    return labels


def _unlisted_images(root: Path, files: dict[str, list[Path]],
                     referenced: set[Path]) -> list[Problem]:
    """Images in the folder that no row names: they have no label."""
    problems = []
    for paths in files.values():
        for path in paths:
            if path not in referenced and looks_like_image(path):
                problems.append(Problem("missing_label", "image has no row in the labels file",
                                        case_id_from(path.stem) or None, rel(root, path)))
    return problems


def _infer_annotation(candidates: list[Candidate]) -> AnnotationType:
    single = all(len(c.labels) == 1 for c in candidates)
    return "single_label" if single else "multi_label"
