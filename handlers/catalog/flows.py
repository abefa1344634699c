"""The flows table (DESIGN.md §1) as frozen data, one typed lookup. No I/O beyond the presets.

| flow        | annotation                | network               | tuning                 |
| ----------- | ------------------------- | --------------------- | ---------------------- |
| general     | any fitting the task type | auto or manual (zoo)  | auto with prefs/manual |
| specialized | fixed by the preset       | fixed by the preset   | auto, no prefs/manual  |
| retrain     | that of the base task     | that of the base task | auto, no prefs/manual  |

The enrich resolvers (``handlers/enrich``) reject every field a row forbids;
``GET /v1/flows`` serves the rows, so both read this one table.
"""

from __future__ import annotations

from functools import cache

from handlers.catalog.presets import list_presets
from schemas.dataset_import import TASK_ANNOTATIONS
from schemas.flows import AnnotationFit, FlowPage, FlowRule
from schemas.tasks import TaskType

__all__ = ["FlowPage", "FlowRule", "UnknownFlow", "flows_page", "get_flow", "list_flows"]

TASK_TYPES: tuple[TaskType, ...] = ("classification", "detection", "segmentation")
ANNOTATIONS = tuple(AnnotationFit.model_validate({"task_type": t, "annotation_types": a})
                    for t, a in TASK_ANNOTATIONS.items())
"""The general flow's fit, from the same table the dataset list filters by."""


class UnknownFlow(KeyError):
    def __init__(self, flow: str) -> None:
        super().__init__(flow)
        self.flow = flow

    def __str__(self) -> str:
        return f"unknown flow {self.flow!r}; one of {', '.join(f.flow for f in list_flows())}"


@cache
def list_flows() -> tuple[FlowRule, ...]:
    """The three rows, in the order of DESIGN.md §1."""
    preset_task_types = tuple(t for t in TASK_TYPES if any(p.task_type == t
                                                             for p in list_presets()))
    return (
        FlowRule(
            flow="general",
            summary="Any dataset whose annotation fits the task type; the network is "
                    "auto-selected from the data type and a preference, or named from the zoo.",
            task_type="required", preset="forbidden", base_task_id="forbidden",
            model="optional", task_types=TASK_TYPES, task_type_from="request",
            annotation_from="task_type", annotations=ANNOTATIONS,
            network=("auto", "manual"),
            tuning=("auto_with_preferences", "manual", "search")),
        FlowRule(
            flow="specialized",
            summary="A preset pins the task, classes, preprocessing, network, weights and "
                    "recipe; the request brings the dataset and, optionally, manual tuning.",
            task_type="optional", preset="required", base_task_id="forbidden",
            model="forbidden", task_types=preset_task_types, task_type_from="preset",
            annotation_from="preset", network=("preset",),
            tuning=("auto_without_preferences", "manual", "search")),
        FlowRule(
            flow="retrain",
            summary="Trains a completed task's network further on a new dataset with the "
                    "same annotation, classes and preprocessing, starting from its weights.",
            task_type="optional", preset="forbidden", base_task_id="required",
            model="forbidden", task_types=TASK_TYPES, task_type_from="base_task",
            annotation_from="base_task", network=("base_task",),
            tuning=("auto_without_preferences", "manual", "search")),
    )


def get_flow(flow: str) -> FlowRule:
    for rule in list_flows():
        if rule.flow == flow:
            return rule
    raise UnknownFlow(flow)


def flows_page(limit: int | None = None, offset: int = 0) -> FlowPage:
    rows = list(list_flows())
    end = None if limit is None else offset + limit
    return FlowPage(items=rows[offset:end], total=len(rows))
