"""The dataset routes' entries in the OpenAPI document (``gateway.openapi.OPERATIONS``)."""

from __future__ import annotations

from typing import get_args

from gateway.openapi import AUTHED, OPERATIONS, PAGING, Op, Param
from imaging.preview import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, WINDOW_NAMES
from schemas.common import ID_PATTERN
from schemas.dataset import AnnotationType, DatasetSummary
from schemas.dataset_import import (
    TASK_ANNOTATIONS,
    CasePage,
    DatasetPage,
    ImportReport,
    ImportRequest,
)
from schemas.tasks import Modality


def _id(name: str, what: str) -> Param:
    return Param(name, "path", {"type": "string", "pattern": ID_PATTERN}, True, f"{what} id")


def _enum(name: str, values: tuple[str, ...], description: str = "") -> Param:
    return Param(name, "query", {"type": "string", "enum": list(values)}, False, description)


DATASET = _id("dataset_id", "dataset")
DATASET_OPERATIONS = [
    Op("get", "/v1/datasets", "listDatasets",
       "List the tenant's datasets, those fitting a task type only if asked", "datasets",
       {200: DatasetPage}, (400, *AUTHED), params=(
           *PAGING,
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
       "datasets", {200: {"type": "string", "format": "binary"}}, (400, *AUTHED, 404, 503),
       params=(DATASET, _id("case_id", "case"),
               _enum("window", WINDOW_NAMES, "auto: the file's own window, else brain (CT) "
                     "or min-max"),
               Param("size", "query", {"type": "integer", "minimum": MIN_SIZE,
                                       "maximum": MAX_SIZE, "default": DEFAULT_SIZE})),
       ok_type="image/png"),
    Op("post", "/v1/datasets/import", "importDataset",
       "Validate and register a dataset from a folder under imports/<tenant>/ in the store",
       "datasets", {201: ImportReport}, (400, *AUTHED, 404, 409, 413, 415, 422, 503),
       body=ImportRequest, ok_headers={"Location": "/v1/datasets/{dataset_id}"}),
]


def register_operations() -> None:
    """Idempotent: importing the routes module twice must not list a route twice."""
    known = {(op.method, op.path) for op in OPERATIONS}
    OPERATIONS.extend(op for op in DATASET_OPERATIONS if (op.method, op.path) not in known)
