"""Hyperparameter search (``tuning.mode == "search"``): the space, the budget and the plan.

A leaf of ``schemas``: ``schemas/tasks.py`` takes :class:`SearchSpace` and
:class:`SearchBudget` into the request's ``tuning``, ``schemas/spec.py`` carries the
resolved :class:`SearchPlan` in the parent's ``task.ready``. The search handler's KV
record (trials, values, artifacts) is in ``schemas/search_state.py``.

A space maps a hyperparameter name (any field of manual tuning but ``seed``, or
``network``: zoo entry ids) to one of three kinds of range::

    {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": true},
     "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
     "freeze_backbone_epochs": {"type": "int", "low": 0, "high": 2}}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from schemas.common import Strict

ParamValue = bool | int | float | str
"""A sampled value as JSON keeps it (``bool`` first: pydantic must not read ``true`` as 1)."""

NETWORK = "network"
"""The one space key that is not a hyperparameter: zoo entries to choose among."""


class FloatParam(Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is above high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class IntParam(Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("a log range needs low >= 1 and step 1")
        return self


class CategoricalParam(Strict):
    type: Literal["categorical"]
    choices: list[ParamValue] = Field(min_length=1, max_length=32)

    @model_validator(mode="after")
    def _distinct(self) -> CategoricalParam:
        if len({repr(c) for c in self.choices}) != len(self.choices):
            raise ValueError("choices must be distinct")
        return self


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
SearchSpace = dict[str, ParamSpec]


def endpoints(spec: FloatParam | IntParam | CategoricalParam) -> list[ParamValue]:
    """The values that bound a range (each checked against the hyperparameter's bounds)."""
    if isinstance(spec, CategoricalParam):
        return list(spec.choices)
    return [spec.low, spec.high]


def contains(spec: FloatParam | IntParam | CategoricalParam, value: object) -> bool:
    """Whether ``value`` is one the range can sample (the baseline trial must be)."""
    if isinstance(spec, CategoricalParam):
        return any(type(c) is type(value) and c == value for c in spec.choices)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(spec, IntParam):
        return isinstance(value, int) and spec.low <= value <= spec.high \
            and (value - spec.low) % spec.step == 0
    return spec.low <= value <= spec.high


class SearchBudget(Strict):
    trials: int = Field(8, ge=1, le=200)
    """Trials in all, the baseline (trial 0) included."""
    max_parallel: int = Field(2, ge=1, le=32)
    """Trials in flight at once: also the size of a wave (see ``schemas/search_state.py``)."""
    max_hours: float = Field(24.0, gt=0, le=24 * 14)
    """Wall-clock limit from the parent's ``task.ready``: no trial is asked after it, and
    the running ones are cancelled at the first event after it."""


Direction = Literal["maximize", "minimize"]
Pruner = Literal["median", "successive_halving", "none"]
"""``median``: Optuna's median pruner (a trial whose best value so far is worse than the
median of the earlier waves' at the same epoch); ``successive_halving``: asynchronous
successive halving with rungs at epochs 1, 2, 4, ... (a trial goes on past a rung only
if it is in the best half of the values reached there); ``none``: every trial runs out."""


def default_direction(objective: str) -> Direction:
    """Losses go down, every other metric (AUC, accuracy, mAP, Dice) goes up."""
    return "minimize" if "loss" in objective else "maximize"


class SearchPlan(Strict):
    """The resolved search of a parent task (``TrainingSpec.search``): what the search
    handler runs. Its children train ``TrainingSpec.hyperparameters`` with the trial's
    values over it."""

    space: SearchSpace = Field(min_length=1)
    budget: SearchBudget
    objective: str = Field(min_length=1, max_length=64)
    direction: Direction
    seed: int = Field(ge=0, le=2**31 - 1)
    pruner: Pruner = "median"
    baseline: dict[str, ParamValue] | None = None
    """Trial 0's values: the recipe tuning ``auto`` derives for the same request (with the
    search's fixed fields), so the best trial is never worse than it on the objective.
    ``None`` when a given space does not contain it (trial 0 is then sampled)."""
