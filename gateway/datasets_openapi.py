"""The dataset routes' entries in the OpenAPI document (``gateway.openapi.OPERATIONS``)."""

from __future__ import annotations

from typing import get_args

from gateway.openapi import AUTHED, CURSOR, OPERATIONS, PAGING, Op, Param
from imaging.preview import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, WINDOW_NAMES
from schemas.common import ID_PATTERN
from schemas.dataset import AnnotationType, DatasetSummary
from schemas.dataset_import import (
    TASK_ANNOTATIONS,
    CasePage,
    DatasetPage,
    ImportAccepted,
    ImportPage,
    ImportRequest,
    ImportStatus,
)
from schemas.tasks import Modality


def _id(name: str, what: str) -> Param:
    return Param(name, "path", {"type": "string", "pattern": ID_PATTERN}, True, f"{what} id")


IDEMPOTENCY_KEY = Param("Idempotency-Key", "header", {"type": "string", "minLength": 1,
                                                     "maxLength": 255},
                        description="A retry with the same key and body returns the same import")


def _enum(name: str, values: tuple[str, ...], description: str = "") -> Param:
    return Param(name, "query", {"type": "string", "enum": list(values)}, False, description)


DATASET = _id("dataset_id", "dataset")
DATASET_OPERATIONS = [
    Op("get", "/v1/datasets", "listDatasets",
       "List the tenant's datasets, those fitting a task type only if asked", "datasets",
       {200: DatasetPage}, (400, *AUTHED), params=(
           *PAGING, CURSOR,
           _enum("task_type", tuple(TASK_ANNOTATIONS),
                 "classification: single/multi-label; detection: boxes; segmentation: masks"),
           _enum("annotation_type", get_args(AnnotationType)),
           _enum("modality", get_args(Modality)))),
    Op("get", "/v1/datasets/{dataset_id}", "getDataset",
       "A dataset's summary with class counts, sizes, patients and splits", "datasets",
       {200: DatasetSummary}, (*AUTHED, 404), params=(DATASET,)),
    Op("get", "/v1/datasets/{dataset_id}/cases", "listCases", "A page of a dataset's cases",
       "datasets", {200: CasePage}, (400, *AUTHED, 404, 503), params=(
           DATASET, *PAGING, _enum("split", ("train", "val", "test")),
           Param("label", "query", {"type": "string"}, False, "only cases with this class"))),
    Op("get", "/v1/datasets/{dataset_id}/cases/{case_id}/preview.png", "previewCase",
       "A case rendered to PNG: windowed, MONOCHROME1 inverted, boxes and mask drawn",
       "datasets", {200: {"type": "string", "format": "binary"}}, (400, *AUTHED, 404, 422, 503),
       params=(DATASET, _id("case_id", "case"),
               _enum("window", WINDOW_NAMES, "auto: the file's own VOI LUT or window (with "
                     "its VOI LUT function), else the CT body region's first window "
                     "(soft tissue when unknown), else min-max"),
               Param("size", "query", {"type": "integer", "minimum": MIN_SIZE,
                                       "maximum": MAX_SIZE, "default": DEFAULT_SIZE})),
       ok_type="image/png"),
    Op("post", "/v1/datasets/imports", "submitDatasetImport",
       "Queue the import of a folder under imports/<tenant>/ in the store: 202 at once; "
       "follow Location for progress and, once finished, the full report", "datasets",
       {202: ImportAccepted}, (400, *AUTHED, 409, 413, 415, 422, 503), body=ImportRequest,
       params=(IDEMPOTENCY_KEY,), ok_headers={"Location": "/v1/datasets/imports/{import_id}"}),
    Op("get", "/v1/datasets/imports", "listDatasetImports",
       "The tenant's imports, newest first (without their reports)", "datasets",
       {200: ImportPage}, (400, *AUTHED, 503), params=PAGING),
    Op("get", "/v1/datasets/imports/{import_id}", "getDatasetImport",
       "An import's state (queued, running, completed, failed), progress (done of total in "
       "the current phase; files read, cases checked, cases uploaded), times and, once "
       "finished, the report listing every problem with its case", "datasets",
       {200: ImportStatus}, (*AUTHED, 404, 503), params=(_id("import_id", "import"),)),
    Op("post", "/v1/datasets/import", "importDatasetMoved",
       "Moved: 308 to POST /v1/datasets/imports (same body; the import is now a job)",
       "datasets", {308: None, 202: ImportAccepted},  # 202 etc.: a client that follows
       (400, *AUTHED, 409, 413, 415, 422, 503), body=ImportRequest,
       ok_headers={"Location": "/v1/datasets/imports"}),
]


def register_operations() -> None:
    """Idempotent: importing the routes module twice must not list a route twice."""
    known = {(op.method, op.path) for op in OPERATIONS}
    OPERATIONS.extend(op for op in DATASET_OPERATIONS if (op.method, op.path) not in known)
