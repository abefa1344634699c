"""Resolving ``tuning.mode == "search"`` into a :class:`SearchPlan` (pure; used by enrich).

The enrich handler resolves a search parent like any task of its flow with
tuning ``auto`` (the flow's own rules: preferences in the general flow, the
preset's or the base task's recipe otherwise), then :func:`plan_search` applies
the search's fixed ``hyperparameters``, derives the default space when none is
given, and checks the space the way manual tuning is checked: each range's
endpoints against this network and these labels (``handlers/tuning.check``), the
fields the flow fixes (the network in the specialized and retrain flows, the image
size of a retrain), and the network choices against the zoo and the mirrored weights.
Every problem is an error on ``tuning.space.<name>``, collected, never raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from handlers.catalog.zoo import UnknownZooEntry, ZooEntry, get_entry
from handlers.enrich.contracts import WeightsIndex, err
from handlers.tuning import check
from schemas.common import ErrorDetail
from schemas.flows import FlowRule
from schemas.search import (
    NETWORK,
    CategoricalParam,
    FloatParam,
    ParamValue,
    SearchPlan,
    SearchSpace,
    contains,
    default_direction,
    endpoints,
)
from schemas.tasks import Hyperparameters, SearchTuning

SPACE_FIELD = "tuning.space"
MAIN_METRIC = {"classification": "auc", "detection": "map_50", "segmentation": "dice"}
METRICS = {
    "classification": ("auc", "accuracy", "val_loss", "sensitivity", "specificity"),
    "detection": ("map_50", "map_50_95", "map_75"),
    "segmentation": ("dice", "iou", "val_loss"),
}
"""What the runner reports per epoch for each task type (runner/tasks/*, runner/metrics.py)."""


@dataclass(frozen=True)
class SearchContext:
    """What the flow resolved for the parent: the trials vary it."""

    rule: FlowRule
    entry: ZooEntry
    pretrained: bool
    task_type: str
    label_mode: str
    classes: list[str]
    num_cases: int
    metrics: list[str]
    """Extra metrics the spec reports (a preset's)."""


def default_space(hp: Hyperparameters, ctx: SearchContext) -> SearchSpace:
    """Around the auto recipe, so that it is inside (the baseline trial): learning rate
    and weight decay a decade either side on a log scale (capped where the optimizer
    diverges), batch sizes half and double that still leave several steps per epoch,
    and the augmentation strength (not for detectors, whose boxes follow no flips here)."""
    lr = hp.learning_rate
    cap = 0.01 if hp.optimizer == "adamw" else 0.5
    space: SearchSpace = {"learning_rate": FloatParam(type="float", low=lr / 10,
                                                      high=max(lr, min(lr * 10, cap)),
                                                      log=True)}
    wd = hp.weight_decay
    space["weight_decay"] = (FloatParam(type="float", low=min(1e-5, wd), high=max(0.1, wd),
                                        log=True) if wd > 0 else
                             FloatParam(type="float", low=0.0, high=0.1))
    most = max(2, ctx.num_cases // 4)
    sizes = sorted({b for b in (hp.batch_size // 2, hp.batch_size * 2) if 2 <= b <= most}
                   | {hp.batch_size})
    if len(sizes) > 1:
        space["batch_size"] = CategoricalParam(type="categorical", choices=list(sizes))
    if ctx.task_type != "detection":
        space["augmentation"] = CategoricalParam(type="categorical",
                                                 choices=["none", "light", "strong"])
    return space


def objective_errors(objective: str, ctx: SearchContext) -> list[ErrorDetail]:
    known = {*METRICS.get(ctx.task_type, ()), *ctx.metrics}
    if ctx.task_type == "classification":
        known |= {f"auc_{c}" for c in ctx.classes}
    elif ctx.task_type == "segmentation":
        known |= {f"{m}_{c}" for c in ctx.classes for m in ("dice", "iou")}
    if objective in known:
        return []
    return [err("tuning.objective", "unknown_metric",
                f"{ctx.task_type} reports {', '.join(sorted(known))}, not {objective!r}")]


def fixed_by_flow(rule: FlowRule) -> dict[str, str]:
    """Space keys a flow does not let a request choose, and who fixes them."""
    fixed: dict[str, str] = {}
    if not {"auto", "manual"} & set(rule.network):
        fixed[NETWORK] = "the preset" if rule.annotation_from == "preset" else "the base task"
    if rule.annotation_from == "base_task":
        fixed["image_size"] = "the base task's preprocessing"
    return fixed


def network_errors(spec: CategoricalParam, hp: Hyperparameters, ctx: SearchContext,
                   weights: WeightsIndex) -> list[ErrorDetail]:
    """Each choice: a zoo entry of this task type, with weights when pretrained, that
    trains with the parent's recipe (a fixed-input network at another size does not)."""
    errors: list[ErrorDetail] = []
    field = f"{SPACE_FIELD}.{NETWORK}"
    for choice in spec.choices:
        try:
            entry = get_entry(str(choice))
        except UnknownZooEntry as exc:
            errors.append(err(field, "unknown_network", str(exc)))
            continue
        if ctx.task_type not in entry.task_types:
            errors.append(err(field, "task_type_mismatch",
                              f"{entry.id} supports {list(entry.task_types)}, "
                              f"not {ctx.task_type}"))
        elif ctx.pretrained and weights.find(entry.id) is None:
            errors.append(err(field, "weights_missing",
                              f"no pretrained weights for {entry.id} in the store; stage them "
                              f"with `radtrain zoo mirror {entry.id}`"))
        else:
            errors += [e.model_copy(update={"field": field, "message": f"{entry.id}: "
                                            f"{e.message}"}) for e in check(hp, entry,
                                                                            ctx.label_mode)]
    return errors


def space_errors(space: SearchSpace, hp: Hyperparameters, ctx: SearchContext,
                 weights: WeightsIndex) -> list[ErrorDetail]:
    """Every range's endpoints over the parent's recipe, as manual tuning is checked."""
    errors: list[ErrorDetail] = []
    fixed = fixed_by_flow(ctx.rule)
    for name, spec in space.items():
        field = f"{SPACE_FIELD}.{name}"
        if name in fixed:
            errors.append(err(field, "not_allowed", f"the {ctx.rule.flow} flow's {name} is "
                                                    f"fixed by {fixed[name]}; remove it"))
        elif name == NETWORK and isinstance(spec, CategoricalParam):
            errors += network_errors(spec, hp, ctx, weights)
        else:
            for value in endpoints(spec):
                trial = Hyperparameters(**{**hp.model_dump(), name: value})
                errors += [e.model_copy(update={"field": field, "message": f"{value!r}: "
                                                f"{e.message}"})
                           for e in check(trial, ctx.entry, ctx.label_mode)]
    return errors


def baseline_of(space: SearchSpace, hp: Hyperparameters, entry: ZooEntry
                ) -> dict[str, ParamValue] | None:
    """The parent's recipe as trial values, if the space contains every one of them."""
    values: dict[str, Any] = hp.model_dump()
    values[NETWORK] = entry.id
    base = {name: values[name] for name in space}
    return base if all(contains(space[n], v) for n, v in base.items()) else None


def plan_search(tuning: SearchTuning, hp: Hyperparameters, ctx: SearchContext,
                weights: WeightsIndex
                ) -> tuple[Hyperparameters, SearchPlan | None, list[ErrorDetail], str]:
    """The parent's recipe with the fixed fields, the plan, every error, and the reason."""
    fixed = tuning.hyperparameters.model_dump(exclude_none=True)
    base = Hyperparameters(**{**hp.model_dump(), **fixed, "seed": tuning.seed})
    errors = check(base, ctx.entry, ctx.label_mode)
    space = dict(tuning.space) if tuning.space else default_space(base, ctx)
    errors += space_errors(space, base, ctx, weights)
    objective = tuning.objective or MAIN_METRIC.get(ctx.task_type, "val_loss")
    errors += objective_errors(objective, ctx)
    if errors:
        return base, None, errors, ""
    baseline = baseline_of(space, base, ctx.entry)
    plan = SearchPlan(space=space, budget=tuning.budget, objective=objective,
                      direction=tuning.direction or default_direction(objective),
                      seed=tuning.seed, pruner=tuning.pruner, baseline=baseline)
    reason = (f"search: {tuning.budget.trials} trials, {tuning.budget.max_parallel} at a "
              f"time, at most {tuning.budget.max_hours:g} h, {plan.direction} {objective}; "
              f"space {'given' if tuning.space else 'derived from the auto recipe'}: "
              f"{', '.join(sorted(space))}; "
              + ("trial 0 is the auto recipe" if baseline is not None
                 else "the auto recipe is outside the space, so trial 0 is sampled")
              + (f"; fixed: {', '.join(sorted(fixed))}" if fixed else ""))
    return base, plan, errors, reason
