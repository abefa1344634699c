"""The Optuna side of a search: a study rebuilt from the KV record before each decision.

Nothing of Optuna outlives a call: :func:`study_of` makes an in-memory study and
adds the trials of the earlier waves (``optuna.trial.create_trial`` with their
params, state, value and intermediate values), so the decision is a function of
the seed and that history only. :func:`ask` seeds a TPE sampler per trial number
(two trials of one wave see the same history, and must not get the same values);
:func:`should_prune` asks the median pruner (or applies successive halving) about a
running trial;
:func:`importances` runs PED-ANOVA (deterministic: no seed).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState, create_trial

from schemas.search import CategoricalParam, FloatParam, ParamValue, SearchPlan, SearchSpace
from schemas.search_state import SearchTrial

optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger("radtrain.search")

STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
          "failed": TrialState.FAIL, "stopped": TrialState.FAIL}
"""How a finished trial enters the rebuilt study (``running`` ones never do)."""


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for name, spec in space.items():
        if isinstance(spec, CategoricalParam):
            out[name] = CategoricalDistribution(list(spec.choices))
        elif isinstance(spec, FloatParam):
            out[name] = FloatDistribution(spec.low, spec.high, log=spec.log)
        else:
            out[name] = IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    return out


def trial_seed(seed: int, number: int) -> int:
    """One sampler seed per trial number, a pure function of the search's seed."""
    return (seed * 1_000_003 + number * 7_919 + 17) % (2**32)


def frozen(trial: SearchTrial, dists: dict[str, BaseDistribution],
           state: TrialState | None = None) -> FrozenTrial:
    done = state if state is not None else STATES[trial.state]
    value = trial.value if done == TrialState.COMPLETE else None
    return create_trial(state=done, value=value, params=dict(trial.params),
                        distributions=dists, intermediate_values=dict(trial.intermediate))


def study_of(plan: SearchPlan, history: Iterable[SearchTrial], *,
             sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """An in-memory study holding ``history``'s finished trials, in trial order."""
    dists = distributions(plan.space)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning, nothing to act on
        study = optuna.create_study(direction=plan.direction, sampler=sampler)
        for trial in sorted(history, key=lambda t: t.number):
            if trial.state == "running":
                continue
            if trial.state == "complete" and (trial.value is None or math.isnan(trial.value)):
                continue
            study.add_trial(frozen(trial, dists))
    return study


def ask(plan: SearchPlan, number: int, history: Iterable[SearchTrial]) -> dict[str, ParamValue]:
    """Trial ``number``'s values: the baseline for trial 0 when the plan has one, else
    TPE (seeded per trial) over ``history`` with the plan's distributions."""
    if number == 0 and plan.baseline is not None:
        return dict(plan.baseline)
    startup = min(10, max(2, plan.budget.trials // 3))
    sampler = optuna.samplers.TPESampler(seed=trial_seed(plan.seed, number),
                                         n_startup_trials=startup)
    study = study_of(plan, history, sampler=sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = study.ask(fixed_distributions=distributions(plan.space))
    return {name: _plain(value) for name, value in trial.params.items()}


def _plain(value: Any) -> ParamValue:
    """numpy scalars and the like as JSON keeps them."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    return float(value)


def should_prune(plan: SearchPlan, trial: SearchTrial, history: Iterable[SearchTrial]) -> bool:
    """The median pruner (once one trial is complete, from the first epoch) on ``trial``'s
    intermediate values against the complete trials of ``history``: pruned when its best
    value so far is worse than the median of theirs at the same epoch."""
    if plan.pruner == "none" or not trial.intermediate:
        return False
    if plan.pruner == "successive_halving":
        return halving_prunes(plan, trial, history)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = study_of(plan, history)
    running = frozen(trial, distributions(plan.space), TrialState.RUNNING)
    return bool(pruner.prune(study, running))


def halving_prunes(plan: SearchPlan, trial: SearchTrial, history: Iterable[SearchTrial],
                   reduction: int = 2) -> bool:
    """Asynchronous successive halving (the rule of Optuna's ``SuccessiveHalvingPruner``,
    over our records rather than its storage attributes): at a rung (epochs 1, 2, 4, ...)
    the trial goes on only if its value is among the best ``1/reduction`` of the values the
    earlier waves' trials reached at that epoch, its own included."""
    step = max(trial.intermediate)
    if step < 1 or step & (step - 1):
        return False  # not a rung
    value = trial.intermediate[step]
    values = [t.intermediate[step] for t in history if step in t.intermediate] + [value]
    maximize = plan.direction == "maximize"
    values.sort(reverse=maximize)
    cutoff = values[max(1, len(values) // reduction) - 1]
    return value < cutoff if maximize else value > cutoff


def importances(plan: SearchPlan, trials: Iterable[SearchTrial]) -> dict[str, float]:
    """PED-ANOVA importances over the complete trials; ``{}`` with fewer than two or when
    the values do not vary (nothing to explain).

    PED-ANOVA rather than Optuna's default fANOVA: fANOVA needs scikit-learn, which the
    handlers do not install, and PED-ANOVA is deterministic with no seed to fix at all
    (the same trials give the same importances on every install)."""
    done = [t for t in trials if t.state == "complete" and t.value is not None]
    if len(done) < 2 or len({t.value for t in done}) < 2:
        return {}
    study = study_of(plan, done)
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError, ImportError) as exc:  # one distinct value ...
        log.info("no parameter importances: %s", exc)
        return {}
    return {name: float(v) for name, v in found.items()}
