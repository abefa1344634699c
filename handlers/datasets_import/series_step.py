"""The series step of an import (issue 15 item 1): after validation, before upload.

* A stack case (several images, a whole series with one label) gets its images
  in anatomical order (imaging/series.py); a fallback order is a warning.
* Single-slice DICOM cases are grouped by StudyInstanceUID + SeriesInstanceUID;
  a series of two or more becomes a ``SeriesInfo`` in the manifest, its cases
  in slice order, so the runner can stack neighbour slices (2.5D) and the
  PE metric can aggregate per exam. A slice without a PatientID takes that of
  its series (or the study UID): a patient-level split then never separates
  two slices of one patient.
* The CT/MR body region of each case is counted from BodyPartExamined and the
  study description; a CT of unknown or mixed body part is a warning that
  spells out the choice of windows (the general flow asks for it).
"""

from __future__ import annotations

from collections import Counter

from handlers.datasets_import.base import Problem
from handlers.datasets_import.validate import Validated, ValidCase
from imaging.reader import ImageHeader
from imaging.series import SliceGeometry, body_region, group_series, order_slices
from imaging.windows import region_choices
from schemas.dataset import SeriesInfo

__all__ = ["apply_series"]


def _geometry(header: ImageHeader) -> SliceGeometry:
    return header.geometry or SliceGeometry()


def apply_series(checked: Validated, exams: dict[str, dict[str, float]] | None = None) -> None:
    """Order stacks, build the series table, fill patients and body regions, in place."""
    for case in checked.good:
        if len(case.images) > 1:
            _order_stack(case, checked.warnings)
    checked.series = _series_table(checked.good, exams or {}, checked.warnings)
    checked.body_regions = _regions(checked)


def _order_stack(case: ValidCase, warnings: list[Problem]) -> None:
    geometries = [_geometry(h) for h in case.headers]
    if not any(h.format == "dicom" for h in case.headers):
        return  # PNG/JPEG stacks keep the order the labels file gives
    ordering = order_slices(geometries, [p.name for p in case.images])
    case.images = [case.images[i] for i in ordering.order]
    case.headers = [case.headers[i] for i in ordering.order]
    if ordering.note:
        warnings.append(Problem("slice_order", ordering.note, case.case_id, case.source))


def _series_table(cases: list[ValidCase], exams: dict[str, dict[str, float]],
                  warnings: list[Problem]) -> dict[str, SeriesInfo]:
    singles = [c for c in cases if len(c.images) == 1 and c.headers[0].format == "dicom"]
    groups, _loose = group_series(singles, lambda c: _geometry(c.headers[0]).series_key)
    table: dict[str, SeriesInfo] = {}
    for (study, series), members in sorted(groups.items()):
        group = [singles[i] for i in members]
        _share_patient(group, study)
        if len(group) < 2 and series not in exams:
            continue
        ordering = order_slices([_geometry(c.headers[0]) for c in group],
                                [c.images[0].name for c in group])
        ordered = [group[i] for i in ordering.order]
        key = series if series not in table else f"{study}/{series}"  # a UID reused: keep both
        for case in ordered:
            case.series = key
        table[key] = SeriesInfo(
            study_uid=study, series_uid=series, ordered_by=ordering.by,
            cases=[c.case_id for c in ordered], positions=ordering.positions,
            exam_labels=dict(exams.get(series, {})))
        if ordering.note:
            warnings.append(Problem("slice_order", f"series {series}: {ordering.note}",
                                    source=ordered[0].source))
    return table


def _share_patient(group: list[ValidCase], study: str) -> None:
    """Slices without a PatientID take their series' (most common) one, else the study's."""
    known = Counter(c.patient_id for c in group if c.patient_id)
    patient = known.most_common(1)[0][0] if known else f"study-{study}"
    for case in group:
        if not case.patient_id:
            case.patient_id = patient


def _regions(checked: Validated) -> dict[str, int] | None:
    """Body region -> cases, for CT and MR datasets; a warning for an unknown CT region."""
    if checked.modality not in ("CT", "MR") or not checked.good:
        return None
    counts: Counter[str] = Counter()
    for case in checked.good:
        mid = case.headers[len(case.headers) // 2]
        counts[body_region(_geometry(mid)) or "unknown"] += 1
    if checked.modality == "CT":
        known = sorted(k for k in counts if k != "unknown")
        if counts["unknown"] or len(known) > 1:
            what = (f"{counts['unknown']} of {len(checked.good)} cases say no body part "
                    "(BodyPartExamined / study description)" if counts["unknown"]
                    else f"the cases show several body parts ({', '.join(known)})")
            checked.warnings.append(Problem(
                "ct_body_part_unknown",
                f"{what}: the general flow will not guess CT windows; choose them with "
                f"preprocessing.windows in the task request ({region_choices()}), or train "
                "with a preset"))
    return dict(sorted(counts.items()))
