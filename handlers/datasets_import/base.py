"""What every importer shares: options, candidate cases, problems, file helpers.

An importer is a parser: source folder + labels file -> ``Parsed`` (candidate
cases and the problems found while parsing). It never touches the store; the
checks that need the images (sizes, modality, masks) run in ``validate``, so
each format stays a small, separately testable function.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imaging.reader import MAX_IMAGE_BYTES
from schemas.dataset import AnnotationType
from schemas.dataset_import import (
    DecodeMode,
    ImportFormat,
    ImportProblem,
    ImportRequest,
    RleLayout,
)
from schemas.tasks import Modality

MAX_LABELS_BYTES = 256 * 1024 * 1024
"""A labels CSV/JSON larger than this is refused before parsing."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class ImportOptions:
    name: str
    format: ImportFormat
    tenant: str
    dataset_id: str | None = None
    annotation_type: AnnotationType | None = None
    classes: list[str] | None = None
    modality: Modality | None = None
    labels: str | None = None
    """Labels file relative to the source folder; found by name when None."""
    skip_bad: bool = False
    replace: bool = False
    rle: RleLayout = "relative"
    decode: DecodeMode = "auto"
    max_image_bytes: int = MAX_IMAGE_BYTES
    upload_workers: int = 16
    """Threads storing images at once (``Settings.import_upload_workers``)."""
    header_workers: int = 0
    """Processes reading headers; 0: one per idle core (``Settings.import_header_workers``)."""
    header_pool_min: int = 20_000
    """Fewer images are read in-process (``Settings.import_header_pool_min``)."""

    @classmethod
    def from_request(cls, req: ImportRequest, tenant: str, **overrides: Any) -> ImportOptions:
        """The options of an API/CLI request; the tenant comes from the caller's identity."""
        fields: dict[str, Any] = {
            "name": req.name, "format": req.format, "tenant": tenant,
            "dataset_id": req.dataset_id, "annotation_type": req.annotation_type,
            "classes": req.classes, "modality": req.modality, "labels": req.labels,
            "skip_bad": req.skip_bad, "replace": req.replace, "rle": req.rle,
            "decode": req.decode}
        return cls(**{**fields, **overrides})


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    case_id: str | None = None
    source: str | None = None

    def to_schema(self) -> ImportProblem:
        return ImportProblem(code=self.code, message=self.message, case_id=self.case_id,
                             source=self.source)


class MaskError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MaskSource(Protocol):
    """Where a case's mask comes from; ``load`` checks it against the image."""

    source: str

    def load(self, rows: int, cols: int, n_classes: int) -> np.ndarray:
        """(rows, cols) uint8 class indices, or ``MaskError``."""
        ...


@dataclass
class RawBox:
    label: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass
class Candidate:
    """A case as the labels file describes it, not yet checked against its images."""

    case_id: str
    images: list[Path]
    source: str
    labels: list[str] = field(default_factory=list)
    boxes: list[RawBox] = field(default_factory=list)
    mask: MaskSource | None = None
    patient_id: str | None = None
    split: str | None = None
    expected_size: tuple[int, int] | None = None
    """(rows, cols) the labels file claims (COCO's height/width), checked against the image."""


@dataclass
class Parsed:
    annotation_type: AnnotationType
    classes: list[str]
    candidates: list[Candidate] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    exams: dict[str, dict[str, float]] = field(default_factory=dict)
    """SeriesInstanceUID -> exam-level labels (the RSNA STR PE layout; issue 15)."""


class ImportAbort(Exception):
    """The source cannot be parsed at all (no labels file, unreadable JSON)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def case_id_from(raw: str) -> str:
    """A store- and subject-safe case id: other characters become ``_``.

    DICOM UIDs (SIIM's ImageId) and file names with dots or spaces are common;
    two names that map to one id are then caught as duplicates.
    """
    return _UNSAFE.sub("_", raw.strip()).lstrip("_-")[:128]


def inside(root: Path, rel: str) -> Path | None:
    """``root/rel`` if it stays inside ``root`` (no ``..``, no absolute path), else None.

    Checked on the text, not by resolving: resolving costs syscalls per path
    component, and an import reads thousands of paths.
    """
    if not rel or rel.startswith(("/", "\\")) or "\\" in rel or "\x00" in rel:
        return None
    parts = rel.split("/")
    if any(part == ".." for part in parts):
        return None
    return root.joinpath(*(part for part in parts if part not in ("", ".")))


def rel(root: Path, path: Path) -> str:
    """``path`` relative to ``root`` for messages; the bare name if it is elsewhere."""
    top, text = str(root), str(path)
    if text.startswith(top) and text[len(top):len(top) + 1] == "/" and top != "/":
        return text[len(top) + 1:]  # ``relative_to(...).as_posix()`` without two parses
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def index_files(root: Path) -> dict[str, list[Path]]:
    """File name -> paths under ``root`` (recursive, hidden files skipped), in path order.

    One ``scandir`` per folder: each entry brings its file type, and a hidden folder
    is not entered. (``rglob`` with ``is_file`` and ``relative_to`` per path cost a
    stat and two path parses per file: a tenth of a small import.) As ``rglob``,
    it does not enter symlinked folders and skips folders it may not read.
    """
    files: list[tuple[tuple[str, ...], str]] = []
    _scan_folder(str(root), (), files)
    found: dict[str, list[Path]] = {}
    for parts, path in sorted(files):  # by parts: the order of the Paths
        found.setdefault(parts[-1], []).append(Path(path))
    return found


def _scan_folder(folder: str, parts: tuple[str, ...],
                 out: list[tuple[tuple[str, ...], str]]) -> None:
    try:
        with os.scandir(folder) as entries:
            listed = list(entries)
    except PermissionError:
        return
    for entry in listed:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            _scan_folder(entry.path, (*parts, entry.name), out)
        elif entry.is_file():
            out.append(((*parts, entry.name), entry.path))


def labels_file(root: Path, opts: ImportOptions, suffixes: tuple[str, ...],
                prefer: str = "") -> Path:
    """The labels file: ``opts.labels``, or the only top-level file with a suffix."""
    if opts.labels:
        path = inside(root, opts.labels)
        if path is None or not path.is_file():
            raise ImportAbort(Problem("missing_labels_file",
                                      f"labels file {opts.labels!r} not found in the source"))
        return path
    found = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if prefer and len(found) > 1:
        found = [p for p in found if prefer in p.name.lower()] or found
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found[:5])})"
        raise ImportAbort(Problem("missing_labels_file",
                                  f"{what} {'/'.join(suffixes)} files at the top of the source;"
                                  " name the labels file (--labels)"))
    return found[0]


_IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg"}


def looks_like_image(path: Path) -> bool:
    """An image by its suffix, or a suffix-less file with the DICOM preamble."""
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def read_text(path: Path) -> str:
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise ImportAbort(Problem("too_large", f"{path.name} is over {MAX_LABELS_BYTES} bytes"))
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportAbort(Problem("invalid_labels_file",
                                  f"{path.name} is not UTF-8 text ({exc.reason})")) from exc


def read_csv(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Header (names stripped) and ``(line number, cells)`` rows of a labels CSV."""
    reader = csv.reader(io.StringIO(read_text(path)))
    try:
        header = [h.strip() for h in next(reader)]
    except (StopIteration, csv.Error) as exc:
        raise ImportAbort(Problem("invalid_labels_file", f"{path.name} has no header row")) from exc

    def rows() -> Iterator[tuple[int, list[str]]]:
        try:
            for cells in reader:
                if any(c.strip() for c in cells):
                    yield reader.line_num, [c.strip() for c in cells]
        except csv.Error as exc:
            raise ImportAbort(Problem("invalid_labels_file",
                                      f"{path.name}:{reader.line_num}: {exc}")) from exc

    return header, rows()


def column(header: list[str], *names: str) -> int | None:
    """Index of the first header matching one of ``names`` (case-insensitive)."""
    lowered = [h.lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}
