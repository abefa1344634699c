"""The search handler's record in KV ``searches`` (issue 18): one per parent task.

Everything the search handler knows lives here and in the ``TASKS`` stream, so a
restarted (or another) handler continues the same study: the Optuna study is
rebuilt from :attr:`SearchState.trials` before each decision (handlers/search/study.py).

Trials are asked in *waves* of ``budget.max_parallel``: wave ``w`` (trials
``w*P .. w*P+P-1``) is asked when every trial of the waves before it has ended, and
both the sampler and the pruner only ever see those earlier waves. Which trial
finishes first therefore changes nothing: the same seed asks the same trials in
the same order on a rerun.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.common import Identifier, Strict
from schemas.events import Artifact
from schemas.search import ParamValue
from schemas.spec import TrainingSpec

TrialState = Literal["running", "complete", "pruned", "failed", "stopped"]
"""``running``: asked (its child task is anywhere between requested and training);
``pruned``: stopped early by the pruner from its progress (a cancel was published);
``failed``: the child was rejected, failed or cancelled by someone else;
``stopped``: cancelled because the search ended (budget ``max_hours`` or a cancel)."""
SearchStatus = Literal["running", "completed", "failed", "cancelled"]


class SearchTrial(Strict):
    number: int = Field(ge=0)
    task_id: Identifier
    wave: int = Field(ge=0)
    params: dict[str, ParamValue]
    state: TrialState = "running"
    value: float | None = None
    """The objective: the completed child's metric (its best epoch); for a pruned trial
    the last value it reported."""
    intermediate: dict[int, float] = Field(default_factory=dict)
    """Epoch -> objective, from the child's epoch-end progress events."""
    last_metrics: dict[str, float] = Field(default_factory=dict)
    """The metrics of the last epoch-end progress seen (to tell a new epoch's from a
    mid-epoch event that repeats them)."""
    metrics: dict[str, float] = Field(default_factory=dict)
    artifacts: list[Artifact] = Field(default_factory=list)
    note: str = ""
    """Why it ended as it did (pruned at epoch n, the failure code and message)."""


class SearchState(Strict):
    task_id: Identifier
    """The parent task."""
    tenant: Identifier
    spec: TrainingSpec
    """The parent's spec (with ``search`` set): the children are built from it."""
    started_at: datetime
    deadline: datetime
    status: SearchStatus = "running"
    trials: list[SearchTrial] = Field(default_factory=list)
    best: int | None = None
    """The number of the best complete trial, once the search has ended."""
    stop_reason: str = ""
    generation: int = 1


class TrialRow(Strict):
    """One row of the trials table (``GET /v1/tasks/<id>/search``, metrics.json)."""

    number: int
    task_id: str
    wave: int
    state: TrialState
    value: float | None
    params: dict[str, ParamValue]
    note: str = ""
    intermediate: dict[int, float] = Field(default_factory=dict)
    """Epoch -> objective, as the pruner saw it."""


class SearchView(Strict):
    """``GET /v1/tasks/<parent>/search``: the search as ``radtrain watch`` shows it."""

    task_id: str
    status: SearchStatus
    objective: str
    direction: str
    budget: dict[str, float]
    best: int | None
    best_value: float | None
    stop_reason: str
    trials: list[TrialRow]


def trial_rows(state: SearchState) -> list[TrialRow]:
    return [TrialRow(number=t.number, task_id=t.task_id, wave=t.wave, state=t.state,
                     value=t.value, params=dict(t.params), note=t.note,
                     intermediate=dict(t.intermediate)) for t in state.trials]


def best_trial(trials: list[SearchTrial], direction: str) -> SearchTrial | None:
    """The complete trial with the best value (the lowest number among equals)."""
    done = [t for t in trials if t.state == "complete" and t.value is not None]
    if not done:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(done, key=lambda t: (sign * (t.value or 0.0), t.number))


def search_view(state: SearchState) -> SearchView:
    plan = state.spec.search
    assert plan is not None  # a search record is only made for a search parent
    best = best_trial(state.trials, plan.direction)
    return SearchView(task_id=state.task_id, status=state.status, objective=plan.objective,
                      direction=plan.direction, budget=plan.budget.model_dump(),
                      best=best.number if best else None, best_value=best.value if best else None,
                      stop_reason=state.stop_reason, trials=trial_rows(state))
