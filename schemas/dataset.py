"""Dataset manifest: the snapshot a task trains on (DESIGN.md §6)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from schemas.common import Identifier, Strict
from schemas.tasks import Modality

AnnotationType = Literal["single_label", "multi_label", "boxes", "masks"]


class Box(Strict):
    """One object, in pixel coordinates of the case's (middle) image."""

    label: str
    x_min: float = Field(ge=0)
    y_min: float = Field(ge=0)
    x_max: float = Field(gt=0)
    y_max: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if self.x_max <= self.x_min or self.y_max <= self.y_min:
            raise ValueError("box needs x_min < x_max and y_min < y_max")
        return self


class Case(Strict):
    case_id: Identifier
    images: list[str] = Field(min_length=1, max_length=1024)
    """Store keys relative to ``datasets/<dataset_id>/``: one image or a stack (a whole
    series, first slice first, up to 1024 slices)."""
    labels: list[str] = Field(default_factory=list)
    boxes: list[Box] = Field(default_factory=list)
    mask: str | None = None
    """Key (relative, like ``images``) of a PNG of class indices: 0 background, i = classes[i-1]."""
    patient_id: str | None = None
    split: Literal["train", "val", "test"] | None = None
    series: str | None = None
    """Key in the manifest's ``series`` when the case is one slice of a series (RSNA
    hemorrhage and embolism layouts: per-slice labels); a whole-series case lists its
    slices in ``images``, first slice first (imaging/series.py)."""


class SeriesInfo(Strict):
    """One DICOM series whose slices are cases, in anatomical order (issue 15)."""

    study_uid: str
    series_uid: str
    ordered_by: Literal["position", "instance_number", "file_name", "frames"]
    """``position``: ImagePositionPatient along the slice normal; the others are
    fallbacks, and the import report says why."""
    cases: list[Identifier] = Field(min_length=1)
    """The slice cases, first slice first (the runner's 2.5D neighbours)."""
    positions: list[float] | None = None
    """Each slice's position along the normal (mm), when ordered by position."""
    exam_labels: dict[str, float] = Field(default_factory=dict)
    """Exam-level labels of the study (RSNA STR PE: negative_exam_for_pe, ... ; 0/1)."""


class SkippedCase(Strict):
    """A case left out by ``--skip-bad`` import, and why."""

    case_id: str
    reason: str


class DatasetManifest(Strict):
    id: Identifier
    tenant: Identifier
    name: str = Field(min_length=1, max_length=200)
    annotation_type: AnnotationType
    modality: Modality
    classes: list[str] = Field(min_length=1)
    cases: list[Case] = Field(min_length=1)
    skipped: list[SkippedCase] = Field(default_factory=list)
    series: dict[str, SeriesInfo] = Field(default_factory=dict)
    """Series key (the SeriesInstanceUID) -> its slice cases in order."""

    @model_validator(mode="after")
    def _consistent(self) -> DatasetManifest:
        ids = [c.case_id for c in self.cases]
        if len(ids) != len(set(ids)):
            raise ValueError("duplicate case_id in manifest")
        listed = {case for s in self.series.values() for case in s.cases}
        dangling = sorted({c.series for c in self.cases if c.series} - self.series.keys())
        if dangling or not listed <= set(ids):
            raise ValueError(f"series references do not match the cases ({dangling[:3]})")
        known = set(self.classes)
        for case in self.cases:
            unknown = (set(case.labels) | {b.label for b in case.boxes}) - known
            if unknown:
                raise ValueError(f"case {case.case_id}: unknown labels {sorted(unknown)}")
        return self


class SizeStats(Strict):
    """Image size distribution (rows x columns of each case's middle image)."""

    min_rows: int
    max_rows: int
    median_rows: float
    min_cols: int
    max_cols: int
    median_cols: float
    common: dict[str, int] = Field(default_factory=dict)
    """The most frequent sizes, ``"ROWSxCOLS"`` -> number of cases."""


class DatasetStats(Strict):
    """What a user checks before training: balance, sizes, patients, splits."""

    num_images: int
    class_counts: dict[str, int]
    """Cases with at least one example of each class (a label, a box or mask pixels)."""
    positive_rate: dict[str, float]
    """``class_counts / num_cases`` per class."""
    box_counts: dict[str, int] = Field(default_factory=dict)
    """Boxes per class (``boxes`` datasets only)."""
    image_sizes: SizeStats | None = None
    patients: int
    cases_without_patient: int
    splits: dict[str, int]
    """``train``/``val``/``test``/``unassigned`` -> number of cases."""
    body_regions: dict[str, int] | None = None
    """CT/MR body region (``head``, ``chest``, ``abdomen``, ``unknown``) -> cases, from
    BodyPartExamined / study description (imaging/series.py); None: not recorded."""
    series: int = 0
    """DICOM series whose slices are cases (``DatasetManifest.series``)."""


class DatasetSummary(Strict):
    """What KV ``datasets`` holds: enough to enrich a task without reading the manifest."""

    id: Identifier
    tenant: Identifier
    name: str
    annotation_type: AnnotationType
    modality: Modality
    classes: list[str]
    num_cases: int
    manifest_key: str
    manifest_sha256: str
    stats: DatasetStats | None = None
    created_at: datetime | None = None


# The store layout of a dataset (DESIGN.md §5): pure key arithmetic, used by every service.
def manifest_key(dataset_id: str, sha256: str | None = None) -> str:
    if sha256 is None:
        return f"datasets/{dataset_id}/manifest.json"
    return f"datasets/{dataset_id}/manifests/{sha256}.json"


def case_key(dataset_id: str, image: str) -> str:
    return f"datasets/{dataset_id}/{image}"
