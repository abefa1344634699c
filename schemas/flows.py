"""The flows table's shape (DESIGN.md §1): what each flow lets a request choose.

One :class:`FlowRule` per flow. The rows themselves are frozen data in
``handlers/catalog/flows.py``; the enrich handler rejects every request field
a row forbids, and ``GET /v1/flows`` serves the same rows, so what a client
reads is what the handler enforces.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from schemas.api import Page
from schemas.dataset import AnnotationType
from schemas.tasks import Flow, TaskType

FieldRule = Literal["required", "optional", "forbidden"]
"""Whether a request of the flow must, may or must not set the field."""
FixedBy = Literal["request", "preset", "base_task"]
"""Who decides: the request itself, the preset (specialized) or the base task (retrain)."""
NetworkChoice = Literal["auto", "manual", "preset", "base_task"]
"""``auto``: ranked from the data type and the preference; ``manual``: a zoo entry named in
the request; ``preset``/``base_task``: fixed, the request has no ``model``."""
TuningMode = Literal["auto_with_preferences", "auto_without_preferences", "manual", "search"]
"""``auto_with_preferences``: derived from the data and the ``model.preference``;
``auto_without_preferences``: from the data and the fixed recipe only; ``manual``: the
request's ``tuning.hyperparameters``, the rest derived; ``search``: trials of the
flow's recipe over a space (issue 18; the flow's fixed fields stay out of the space)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AnnotationFit(_Frozen):
    """Which dataset annotations a task type trains on."""

    task_type: TaskType
    annotation_types: tuple[AnnotationType, ...]


class FlowRule(_Frozen):
    """One row of the flows table: the request fields a flow takes and what it fixes."""

    flow: Flow
    summary: str
    task_type: FieldRule
    """``task_type``; where it is fixed (``task_type_from``) a given one must equal it."""
    preset: FieldRule
    base_task_id: FieldRule
    model: FieldRule
    """``model`` (the network choice): only where the request chooses the network."""
    task_types: tuple[TaskType, ...]
    """The task types this flow trains."""
    task_type_from: FixedBy
    annotation_from: Literal["task_type", "preset", "base_task"]
    """``task_type``: any annotation in ``annotations`` that fits the task type;
    otherwise the preset's or the base task's annotation."""
    annotations: tuple[AnnotationFit, ...] = ()
    """For ``annotation_from == "task_type"``: the annotations each task type takes."""
    network: tuple[NetworkChoice, ...]
    tuning: tuple[TuningMode, ...]

    @model_validator(mode="after")
    def _consistent(self) -> FlowRule:
        chooses = bool({"auto", "manual"} & set(self.network))
        if chooses == (self.model == "forbidden"):
            raise ValueError(f"{self.flow}: 'model' must be allowed exactly where the request "
                             "chooses the network (auto or manual)")
        if (self.task_type_from == "request") != (self.task_type == "required"):
            raise ValueError(f"{self.flow}: task_type is required exactly where the request "
                             "decides it")
        if (self.annotation_from == "task_type") != bool(self.annotations):
            raise ValueError(f"{self.flow}: annotations are listed exactly where they follow "
                             "the task type")
        if not self.tuning or not self.network or not self.task_types:
            raise ValueError(f"{self.flow}: a flow needs a task type, a network and a tuning")
        return self

    def annotations_for(self, task_type: str) -> tuple[AnnotationType, ...]:
        """The annotations ``task_type`` trains on here (empty where the flow fixes it)."""
        for fit in self.annotations:
            if fit.task_type == task_type:
                return fit.annotation_types
        return ()


class FlowPage(Page[FlowRule]):
    """``GET /v1/flows``."""
