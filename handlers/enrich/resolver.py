"""The one skeleton every flow resolves on: collect every error, then build the spec.

:meth:`Resolver.resolve` runs the shared checks (the flows table's fields,
the dataset found for the tenant), then the flow's own :meth:`Resolver.draft`,
which adds its errors to the same list and returns what the flow decides. It
never stops at the first problem: a request is rejected once, with all of
them, so a user fixes it in one round trip.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import ClassVar

from handlers.catalog.flows import get_flow, list_flows
from handlers.catalog.zoo import get_entry
from handlers.enrich.checks import (
    FIELD_RULES,
    dataset_errors,
    found,
    request_field_errors,
    snapshot,
)
from handlers.enrich.contracts import BaseTask, Rejected, WeightsIndex
from handlers.enrich.placement import Placed, place
from handlers.search.plan import SearchContext, plan_search
from schemas.common import ErrorDetail
from schemas.dataset import DatasetSummary
from schemas.flows import FlowRule
from schemas.pools import DEFAULT_POOLS, RunnerPool
from schemas.search import SearchPlan
from schemas.spec import LabelMode, Lineage, ModelSpec, Preprocessing, TrainingSpec
from schemas.tasks import Flow, Hyperparameters, SearchTuning, TaskRequested, TaskType


@dataclass
class Draft:
    """What a flow decides; the request and the dataset snapshot give the rest of the spec."""

    task_type: TaskType
    classes: list[str]
    label_mode: LabelMode
    preprocessing: Preprocessing
    model: ModelSpec
    hyperparameters: Hyperparameters
    reasons: dict[str, str]
    preset: str | None = None
    class_map: dict[str, str | None] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    lineage: Lineage | None = None
    search: SearchPlan | None = None
    preset_ref: str | None = None
    """``preset_id@version`` (issue 15 item 8)."""


@cache
def takers() -> dict[str, list[str]]:
    """Request field -> the flows that take it (for 'only the specialized flow does')."""
    return {name: [r.flow for r in list_flows() if getattr(r, name) != "forbidden"]
            for name in FIELD_RULES}


class Resolver(ABC):
    """One request of one flow. Subclasses set :attr:`flow` and implement :meth:`draft`."""

    flow: ClassVar[Flow]

    def __init__(self, cmd: TaskRequested, ds: DatasetSummary | None, weights: WeightsIndex,
                 base: BaseTask | None = None,
                 pools: Sequence[RunnerPool] = DEFAULT_POOLS) -> None:
        self.cmd = cmd
        self.ds = found(cmd, ds)
        """The dataset, or ``None`` when it is missing or another tenant's."""
        self.weights = weights
        self.base = base
        self.rule: FlowRule = get_flow(self.flow)
        self.errors: list[ErrorDetail] = []
        self.pools = pools

    def check(self, errors: list[ErrorDetail]) -> None:
        """Record problems and go on: the request is rejected with all of them at the end."""
        self.errors.extend(errors)

    def resolve(self) -> TrainingSpec:
        self.check(request_field_errors(self.cmd, self.rule, takers()))
        self.check(dataset_errors(self.cmd, self.ds))
        placed = place(self.cmd.resources, self.pools)
        if isinstance(placed, ErrorDetail):
            self.check([placed])
        draft = self.draft()
        if draft is not None and self.ds is not None and isinstance(self.cmd.tuning,
                                                                    SearchTuning):
            draft = self.searched(draft, self.cmd.tuning, self.ds)
        if self.errors or draft is None or self.ds is None or not isinstance(placed, Placed):
            raise Rejected(self.errors)
        return self.build(draft, self.ds, placed)

    @abstractmethod
    def draft(self) -> Draft | None:
        """The flow's own checks (through :meth:`check`) and its decisions.

        ``None`` when too much is missing to decide anything; that is only
        allowed after at least one error was recorded.
        """

    def searched(self, d: Draft, tuning: SearchTuning, ds: DatasetSummary) -> Draft:
        """A search parent (issue 18): the draft resolved with tuning auto is the recipe
        the trials vary; the plan and its errors come from handlers/search/plan.py."""
        ctx = SearchContext(rule=self.rule, entry=get_entry(d.model.entry_id),
                            pretrained=d.model.pretrained, task_type=d.task_type,
                            label_mode=d.label_mode, classes=list(d.classes),
                            num_cases=ds.num_cases, metrics=list(d.metrics))
        hp, plan, errors, why = plan_search(tuning, d.hyperparameters, ctx, self.weights)
        self.check(errors)
        d.hyperparameters, d.search = hp, plan
        d.preprocessing = d.preprocessing.model_copy(update={"image_size": hp.image_size})
        d.reasons = {**d.reasons, "search": why}
        return d

    def build(self, d: Draft, ds: DatasetSummary, placed: Placed) -> TrainingSpec:
        cmd = self.cmd
        return TrainingSpec(
            task_id=cmd.task_id, tenant=cmd.tenant, name=cmd.name, description=cmd.description,
            flow=self.flow, task_type=d.task_type, dataset=snapshot(ds), classes=list(d.classes),
            label_mode=d.label_mode, preprocessing=d.preprocessing, model=d.model,
            hyperparameters=d.hyperparameters, resources=placed.resources,
            pool=placed.pool.name, preset=d.preset, preset_ref=d.preset_ref,
            evaluation=cmd.evaluation, class_map=d.class_map, metrics=list(d.metrics),
            lineage=d.lineage,
            reasons=d.reasons, search=d.search)
