"""The RSNA STR pulmonary-embolism layout (RSNA STR PE Detection, Kaggle 2020).

``train.csv`` has one row per image: ``StudyInstanceUID, SeriesInstanceUID,
SOPInstanceUID, pe_present_on_image`` and the exam-level columns repeated on
every row of the exam (``negative_exam_for_pe, indeterminate, chronic_pe,
acute_and_chronic_pe, central_pe, leftsided_pe, rightsided_pe,
rv_lv_ratio_gte_1, rv_lv_ratio_lt_1`` and the unscored ``qa_motion,
qa_contrast, flow_artifact, true_filling_defect_not_pe``). Images are
``train/<study>/<series>/<sop>.dcm`` (or ``<sop>.dcm`` anywhere under the source).

Training is per image: a case is one slice, single-label ``pe`` when
``pe_present_on_image`` is 1, else ``normal`` (the pulmonary-embolism preset's
classes). The exam-level labels go to the manifest's series table
(``SeriesInfo.exam_labels``) through ``Parsed.exams``, for the exam-level
aggregation and the challenge's weighted log loss (runner/pe_metrics.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from handlers.datasets_import.base import (
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

CLASSES = ("normal", "pe")
IMAGE_LABEL = "pe_present_on_image"
SCORED_EXAM_LABELS = ("negative_exam_for_pe", "indeterminate", "chronic_pe",
                      "acute_and_chronic_pe", "central_pe", "leftsided_pe", "rightsided_pe",
                      "rv_lv_ratio_gte_1", "rv_lv_ratio_lt_1")
"""The nine exam-level labels the challenge scores (runner/pe_metrics.py has the weights)."""
OTHER_EXAM_LABELS = ("qa_motion", "qa_contrast", "flow_artifact", "true_filling_defect_not_pe")
UID_COLUMNS = ("studyinstanceuid", "seriesinstanceuid", "sopinstanceuid")
_VALUES = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0}

Row = tuple[str, str, str, float, dict[str, float], str]
"""(study, series, sop, pe_present_on_image, exam labels, source)."""


def parse(root: Path, opts: ImportOptions) -> Parsed:
    if opts.annotation_type not in (None, "single_label"):
        raise ImportAbort(Problem("invalid_option", "the RSNA PE layout is single_label "
                                  "(pe_present_on_image per image)"))
    if opts.classes and list(opts.classes) != list(CLASSES):
        raise ImportAbort(Problem("invalid_classes", f"the RSNA PE layout's classes are "
                                  f"{list(CLASSES)} (normal first)"))
    path = labels_file(root, opts, (".csv",), prefer="train")
    header, rows = read_csv(path)
    cols = _columns(header, path.name)
    problems: list[Problem] = []
    parsed_rows = list(_rows(rows, cols, path.name, problems))
    exams = _exams(parsed_rows, problems)
    files = index_files(root)
    candidates: list[Candidate] = []
    listed: set[Path] = set()
    for study, series, sop, present, _exam, src in parsed_rows:
        if series not in exams:
            continue  # the exam's labels contradict each other: reported once in _exams
        image = _find(root, files, study, series, sop)
        case = case_id_from(sop)
        if image is None:
            problems.append(Problem("missing_image", f"{sop}.dcm not found (train/<study>/"
                                    "<series>/<sop>.dcm or anywhere by name)", case, src))
            continue
        listed.add(image)
        candidates.append(Candidate(case_id=case, images=[image], source=src,
                                    labels=[CLASSES[int(present)]]))
    for paths in files.values():
        for p in paths:
            if p.suffix.lower() == ".dcm" and p not in listed and looks_like_image(p) \
                    and p.stem not in {r[2] for r in parsed_rows}:
                problems.append(Problem("missing_label", "image has no row in the labels file",
                                        case_id_from(p.stem) or None, rel(root, p)))
    return Parsed("single_label", list(CLASSES), candidates, problems, exams)


def _columns(header: list[str], name: str) -> dict[str, int]:
    wanted = (*UID_COLUMNS, IMAGE_LABEL, *SCORED_EXAM_LABELS)
    cols = {w: column(header, w) for w in (*wanted, *OTHER_EXAM_LABELS)}
    missing = [w for w in wanted if cols[w] is None]
    if missing:
        raise ImportAbort(Problem("invalid_labels_file", f"{name}: missing columns "
                                  f"{', '.join(missing)} (the RSNA STR PE train.csv layout)"))
    return {k: v for k, v in cols.items() if v is not None}


def _rows(rows: Iterable[tuple[int, list[str]]], cols: dict[str, int], name: str,
          problems: list[Problem]) -> Iterable[Row]:
    width = max(cols.values()) + 1
    for line, cells in rows:
        src = f"{name}:{line}"
        if len(cells) < width:
            problems.append(Problem("invalid_row", "row is missing cells", source=src))
            continue
        study, series, sop = (cells[cols[c]] for c in UID_COLUMNS)
        values = {k: _VALUES.get(cells[i]) for k, i in cols.items() if k not in UID_COLUMNS}
        bad = sorted(k for k, v in values.items() if v is None)
        if not (study and series and sop):
            problems.append(Problem("invalid_row", "a UID cell is empty", source=src))
        elif bad:
            problems.append(Problem("missing_label", f"{', '.join(bad)}: not 0 or 1",
                                    case_id_from(sop), src))
        else:
            exam = {k: float(v) for k, v in values.items() if k != IMAGE_LABEL and v is not None}
            yield study, series, sop, float(values[IMAGE_LABEL] or 0.0), exam, src


def _exams(rows: list[Row], problems: list[Problem]) -> dict[str, dict[str, float]]:
    """SeriesInstanceUID -> exam labels; an exam whose rows disagree is left out."""
    seen: dict[str, dict[str, float]] = {}
    positive: dict[str, bool] = {}
    broken: dict[str, str] = {}
    where: dict[str, str] = {}
    for _study, series, _sop, present, exam, src in rows:
        first = seen.setdefault(series, exam)
        where.setdefault(series, src)
        positive[series] = positive.get(series, False) or present > 0
        if first != exam and series not in broken:
            diff = sorted(k for k in exam if exam[k] != first.get(k))
            broken[series] = src
            problems.append(Problem("conflicting_label", f"series {series}: exam-level "
                                    f"{', '.join(diff)} differ between its rows", source=src))
    for series, exam in seen.items():
        if series in broken:
            continue
        if positive[series] and (exam["negative_exam_for_pe"] or exam["indeterminate"]):
            broken[series] = where[series]
            problems.append(Problem("conflicting_label", f"series {series}: an image shows PE "
                                    "but the exam is negative or indeterminate",
                                    source=where[series]))
    return {s: e for s, e in seen.items() if s not in broken}


def _find(root: Path, files: dict[str, list[Path]], study: str, series: str,
          sop: str) -> Path | None:
    path = inside(root, f"train/{study}/{series}/{sop}.dcm")
    if path is not None and path.is_file():
        return path
    hits = files.get(f"{sop}.dcm", [])
    return hits[0] if len(hits) == 1 else None
