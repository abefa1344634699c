"""Dataset import and browsing contracts (DESIGN.md §6): request, report, pages.

The report is the one thing a user reads when an import fails, so every
problem carries the case it concerns and the file or row it came from.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.api import CursorPage, Page
from schemas.common import Identifier, Strict
from schemas.dataset import AnnotationType, Case, DatasetSummary, SkippedCase
from schemas.tasks import Modality

ImportFormat = Literal["folder-csv", "rsna-ich", "rsna-pe", "coco", "masks", "siim-rle"]
RleLayout = Literal["relative", "absolute"]
DecodeMode = Literal["auto", "always", "never"]

TASK_ANNOTATIONS: dict[str, tuple[AnnotationType, ...]] = {
    "classification": ("single_label", "multi_label"),
    "detection": ("boxes",),
    "segmentation": ("masks",),
}
"""Which annotation types fit each task type: the dataset list filters by this."""


def fits(summary: DatasetSummary, task_type: str | None = None,
         annotation_type: str | None = None, modality: str | None = None) -> bool:
    """Whether a dataset passes the list filters (unset filters pass everything)."""
    if task_type is not None and summary.annotation_type not in TASK_ANNOTATIONS.get(task_type, ()):
        return False
    if annotation_type is not None and summary.annotation_type != annotation_type:
        return False
    return modality is None or summary.modality == modality


class ImportProblem(Strict):
    code: str
    """``unreadable``, ``not_image``, ``truncated``, ``no_pixel_data``, ``too_large``,
    ``missing_image``, ``missing_label``, ``unknown_label``, ``empty_class``,
    ``duplicate_case``, ``mixed_modality``, ``box_outside``, ``mask_size`` ..."""
    message: str
    case_id: str | None = None
    """None for problems of the whole dataset (an empty class, no cases at all)."""
    source: str | None = None
    """The file or CSV row the problem was found in, relative to the import source."""


class ImportRequest(Strict):
    """``POST /v1/datasets/imports``: a source already uploaded to the store.

    ``source`` is a folder under the caller's own ``imports/<tenant>/`` prefix;
    it can name nothing outside it.
    """

    name: str = Field(min_length=1, max_length=200)
    format: ImportFormat
    source: str = Field(min_length=1, max_length=500)
    dataset_id: Identifier | None = None
    annotation_type: AnnotationType | None = None
    classes: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    modality: Modality | None = None
    labels: str | None = Field(default=None, max_length=500)
    """The labels file (CSV or COCO JSON), relative to ``source``; found by name if absent."""
    skip_bad: bool = False
    replace: bool = False
    """Register a new version of an existing dataset id of the same tenant."""
    rle: RleLayout = "relative"
    decode: DecodeMode = "auto"


class ImportReport(Strict):
    dataset_id: str
    name: str
    format: ImportFormat
    registered: bool
    annotation_type: AnnotationType | None = None
    modality: Modality | None = None
    classes: list[str] = Field(default_factory=list)
    num_cases: int = 0
    """Cases registered (or that would be, had the import not failed)."""
    skipped: list[SkippedCase] = Field(default_factory=list)
    problems: list[ImportProblem] = Field(default_factory=list)
    warnings: list[ImportProblem] = Field(default_factory=list)
    """What registers but deserves a look (issue 15: a multi-label class with no positive
    case, whose AUC is then undefined); never a reason to refuse the import."""
    summary: DatasetSummary | None = None
    elapsed_s: float = 0.0


class DatasetPage(CursorPage[DatasetSummary]):
    """Concrete page types: OpenAPI component names cannot carry ``[...]``."""


class CasePage(Page[Case]):
    pass


# --- import jobs (DESIGN.md §2: anything longer than a second is a job) -------

ImportState = Literal["queued", "running", "completed", "failed"]
ImportPhase = Literal["queued", "downloading", "checking", "uploading", "registering", "done"]
FINISHED_IMPORT_STATES: tuple[ImportState, ...] = ("completed", "failed")


class ImportJob(Strict):
    """The job message on ``imports.jobs.<tenant>.<import_id>``: who imports what.

    ``request.source`` is relative to ``imports/<tenant>/`` in the store; the
    tenant is the submitter's authenticated identity, never the body's.
    """

    import_id: Identifier
    tenant: Identifier
    request: ImportRequest
    submitted_at: datetime
    delete_source: bool = False
    """The source was uploaded for this job only (the CLI): removed once it has finished."""
    traceparent: str | None = None


class ImportProgress(Strict):
    """Where a running import is: ``done`` of ``total`` in the current ``phase``."""

    phase: ImportPhase = "queued"
    done: int = 0
    total: int = 0
    files: int = 0
    """Objects read from the source so far."""
    checked: int = 0
    """Cases validated so far."""
    uploaded: int = 0
    """Cases stored so far."""


class ImportFailure(Strict):
    code: str
    message: str


class ImportStatus(Strict):
    """``GET /v1/datasets/imports/{import_id}``; KV ``dataset_imports`` under ``<tenant>.<id>``.

    ``report`` is the pipeline's full report, once finished; KV keeps only its
    store key (``report_key``: a report may list 200,000 problems, more than a
    KV value holds) and the gateway reads it back for a single import.
    """

    import_id: str
    tenant: str
    state: ImportState
    request: ImportRequest
    dataset_id: str | None = None
    progress: ImportProgress = Field(default_factory=ImportProgress)
    attempt: int = 0
    """The delivery of the job message working on it (0 while queued)."""
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: ImportFailure | None = None
    """Why the import failed: a job error, or ``dataset_invalid``/``dataset_exists``."""
    num_problems: int = 0
    report_key: str | None = None
    report: ImportReport | None = None
    summary: DatasetSummary | None = None
    """The registered dataset, when completed."""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_IMPORT_STATES


class ImportAccepted(Strict):
    """``202`` to ``POST /v1/datasets/imports``; follow ``Location``."""

    import_id: str
    state: ImportState = "queued"


class ImportPage(Page[ImportStatus]):
    """Newest first; items carry no ``report`` (read one import for it)."""
