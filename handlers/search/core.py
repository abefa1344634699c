"""The search as a pure state machine: ``(record, event, now) -> Decision``.

No I/O: :mod:`handlers.search.handler` reads the record from KV ``searches``,
calls :func:`decide`, publishes :attr:`Decision.events` (deterministic message
ids: ``<child>:requested``, ``<child>:cancel_requested``, ``<parent>:completed``...)
and only then writes the record by compare-and-set. A crash in between redelivers
the event, :func:`decide` computes the same events again (the same record, the
same event: the same trials, see ``schemas/search_state.py`` on waves) and
JetStream drops the copies, so a restart neither loses nor repeats a trial.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from handlers.search.study import ask, should_prune
from schemas.events import (
    Artifact,
    Envelope,
    TaskCancelled,
    TaskCancelledEvent,
    TaskCancelRequested,
    TaskCancelRequestedEvent,
    TaskCompleted,
    TaskCompletedEvent,
    TaskFailed,
    TaskFailedEvent,
    TaskProgress,
    TaskProgressEvent,
    TaskReadyEvent,
    TaskRejectedEvent,
    TaskRequestedEvent,
    TaskStarted,
    TaskStartedEvent,
)
from schemas.search import NETWORK, SearchPlan
from schemas.search_state import SearchState, SearchTrial, best_trial
from schemas.spec import TrainingSpec
from schemas.tasks import ManualModel, ManualTuning, ManualTuningParams, Resources, TaskRequested

SOURCE = "radtrain/search"
PARENT_EXTENSION = "searchparent"
"""CloudEvents extension attribute on every event of a trial (runner and enrich carry
it from the trial's ``task.requested``): the parent task's id."""
RUNNER_ID = "search"
NO_RESULT = "search_no_result"
_CHILD = re.compile(r"^(?P<parent>.+)-t(?P<number>\d+)$")


@dataclass
class Decision:
    state: SearchState
    events: list[Envelope] = field(default_factory=list)
    finished: bool = False
    """The search just completed: write its results, then publish ``task.completed``
    (built by :func:`completed_event` with the artifacts written)."""


def child_id(parent: str, number: int) -> str:
    """``<parent>-t<k>``; a parent id too long for that gets a digest in its place."""
    cid = f"{parent}-t{number}"
    if len(cid) <= 128:
        return cid
    return f"{hashlib.sha256(parent.encode()).hexdigest()[:32]}-t{number}"


def trial_number(task_id: str) -> int | None:
    m = _CHILD.match(task_id)
    return int(m["number"]) if m else None


def parent_of(event: Envelope) -> str | None:
    """The search a trial's event belongs to: the extension, else the id's shape."""
    ext = event.extensions.get(PARENT_EXTENSION)
    if isinstance(ext, str):
        return ext
    m = _CHILD.match(event.subject)
    return m["parent"] if m else None


# --- building events -------------------------------------------------------------------


def _plan(state: SearchState) -> SearchPlan:
    assert state.spec.search is not None  # only search parents get a record
    return state.spec.search


def child_request(state: SearchState, trial: SearchTrial) -> TaskRequestedEvent:
    """An ordinary task: the parent's flow, dataset and resources, its network (or the
    trial's), and manual tuning with every hyperparameter (the recipe, then the trial's)."""
    spec = state.spec
    params = dict(trial.params)
    network = str(params.pop(NETWORK, spec.model.entry_id))
    hp = ManualTuningParams(**{**spec.hyperparameters.model_dump(), **params})
    general = spec.flow == "general"
    res = spec.resources
    data = TaskRequested(
        task_id=trial.task_id, tenant=state.tenant, flow=spec.flow,
        name=f"{spec.name[:180]} · trial {trial.number}",
        description=f"trial {trial.number} of search {state.task_id}",
        task_type=spec.task_type, preset=spec.preset if spec.flow == "specialized" else None,
        base_task_id=spec.lineage.base_task_id if spec.lineage and spec.flow == "retrain"
        else None, dataset_id=spec.dataset.dataset_id,
        model=ManualModel(mode="manual", network=network, pretrained=spec.model.pretrained)
        if general else None,
        tuning=ManualTuning(mode="manual", hyperparameters=hp), evaluation=spec.evaluation,
        resources=Resources(pool=spec.pool, gpus=res.gpus if res.gpus > 1 else None,
                            gpu_memory_gb=res.gpu_memory_gb),
        parent_task_id=state.task_id, trial=trial.number)
    return TaskRequestedEvent(source=SOURCE, subject=trial.task_id, data=data,
                              **{PARENT_EXTENSION: state.task_id})


def cancel_child(state: SearchState, trial: SearchTrial, reason: str) -> Envelope:
    return TaskCancelRequestedEvent(
        source=SOURCE, subject=trial.task_id, **{PARENT_EXTENSION: state.task_id},
        data=TaskCancelRequested(task_id=trial.task_id, by=f"search:{state.task_id}",
                                 reason=reason))


def progress(state: SearchState) -> Envelope:
    """The parent's progress: trials ended of the budget, the best value so far."""
    plan = _plan(state)
    ended = sum(t.state != "running" for t in state.trials)
    counts = {s: float(sum(t.state == s for t in state.trials))
              for s in ("running", "complete", "pruned", "failed")}
    best = best_trial(state.trials, plan.direction)
    metrics = {f"trials_{k}": v for k, v in counts.items()}
    if best is not None and best.value is not None:
        metrics |= {"best_trial": float(best.number), plan.objective: best.value}
    return TaskProgressEvent(source=SOURCE, subject=state.task_id,
                             taskgeneration=state.generation, data=TaskProgress(
                                 task_id=state.task_id, epoch=ended, epochs=plan.budget.trials,
                                 step=ended, total_steps=plan.budget.trials, metrics=metrics))


def completed_event(state: SearchState, artifacts: list[Artifact], duration_s: float
                    ) -> Envelope:
    """``task.completed`` of the parent: the best trial's metrics and artifacts (its
    metrics.json replaced by the search's, which holds the trials table)."""
    best = next(t for t in state.trials if t.number == state.best)
    counts = {f"search_{s}": float(sum(t.state == s for t in state.trials))
              for s in ("complete", "pruned", "failed", "stopped")}
    metrics = {**best.metrics, **counts, "search_trials": float(len(state.trials)),
               "search_best_trial": float(best.number)}
    return TaskCompletedEvent(source=SOURCE, subject=state.task_id,
                              taskgeneration=state.generation, data=TaskCompleted(
                                  task_id=state.task_id, metrics=metrics, artifacts=artifacts,
                                  duration_s=max(0.0, duration_s)))


# --- the decisions -----------------------------------------------------------------------


def start(ready: TaskReadyEvent, now: datetime) -> Decision:
    """A search parent became ready: the record, ``task.started``, the first wave."""
    spec: TrainingSpec = ready.data
    plan = spec.search
    assert plan is not None
    state = SearchState(task_id=spec.task_id, tenant=spec.tenant, spec=spec, started_at=now,
                        deadline=now + timedelta(hours=plan.budget.max_hours),
                        generation=ready.taskgeneration)
    started = TaskStartedEvent(source=SOURCE, subject=spec.task_id, **ready.carry(),
                               data=TaskStarted(task_id=spec.task_id, runner_id=RUNNER_ID,
                                                attempt=1, device="search"))
    decision = advance(state, now)
    decision.events.insert(0, started)
    return decision


def advance(state: SearchState, now: datetime, events: list[Envelope] | None = None
            ) -> Decision:
    """Ask the next wave once the current one has ended, or finish the search."""
    out = list(events or [])
    if state.status != "running":
        return Decision(state, out)
    if now >= state.deadline:
        return finish(*stop_running(state, out, "the search's max_hours budget ran out"),
                      reason="max_hours")
    if any(t.state == "running" for t in state.trials):
        return Decision(state, out)
    plan = _plan(state)
    asked = len(state.trials)
    if asked >= plan.budget.trials:
        return finish(state, out, reason="trials")
    wave = asked // plan.budget.max_parallel
    stop = min(plan.budget.trials, (wave + 1) * plan.budget.max_parallel)
    history = list(state.trials)
    new = [SearchTrial(number=k, task_id=child_id(state.task_id, k), wave=wave,
                       params=ask(plan, k, history)) for k in range(asked, stop)]
    state = state.model_copy(update={"trials": [*state.trials, *new]})
    out += [child_request(state, t) for t in new]
    return Decision(state, out)


def stop_running(state: SearchState, events: list[Envelope], why: str
                 ) -> tuple[SearchState, list[Envelope]]:
    trials, out = [], list(events)
    for t in state.trials:
        if t.state == "running":
            out.append(cancel_child(state, t, why))
            t = t.model_copy(update={"state": "stopped", "note": why})
        trials.append(t)
    return state.model_copy(update={"trials": trials}), out


def finish(state: SearchState, events: list[Envelope], *, reason: str) -> Decision:
    plan = _plan(state)
    best = best_trial(state.trials, plan.direction)
    if best is None:
        state = state.model_copy(update={"status": "failed", "stop_reason": reason})
        failed = TaskFailedEvent(source=SOURCE, subject=state.task_id,
                                 taskgeneration=state.generation, data=TaskFailed(
                                     task_id=state.task_id, code=NO_RESULT, retryable=False,
                                     message=f"no trial of {len(state.trials)} completed with "
                                             f"a value of {plan.objective} (stopped by "
                                             f"{reason})"))
        return Decision(state, [*events, progress(state), failed])
    state = state.model_copy(update={"status": "completed", "best": best.number,
                                     "stop_reason": reason})
    return Decision(state, [*events, progress(state)], finished=True)


def cancel(state: SearchState, request: TaskCancelRequestedEvent) -> Decision:
    """The parent was cancelled: every running trial too, then the parent."""
    if state.status != "running":
        return Decision(state)
    state, out = stop_running(state, [], f"the search was cancelled by {request.data.by}")
    state = state.model_copy(update={"status": "cancelled", "stop_reason": "cancelled"})
    out.append(TaskCancelledEvent(source=SOURCE, subject=state.task_id,
                                  taskgeneration=state.generation, data=TaskCancelled(
                                      task_id=state.task_id, by=request.data.by,
                                      reason=request.data.reason)))
    return Decision(state, out)


def _replace(state: SearchState, trial: SearchTrial) -> SearchState:
    return state.model_copy(update={"trials": [trial if t.number == trial.number else t
                                               for t in state.trials]})


def on_progress(state: SearchState, trial: SearchTrial, event: TaskProgressEvent,
                now: datetime) -> Decision | None:
    """Record the epoch's objective (epoch-end events: their metrics are new) and ask the
    pruner against the earlier waves (not after the last epoch, which has nothing left to
    save); a pruned trial is cancelled."""
    plan = _plan(state)
    metrics = event.data.metrics
    if plan.objective not in metrics or metrics == trial.last_metrics:
        return None
    value = metrics[plan.objective]
    trial = trial.model_copy(update={"last_metrics": dict(metrics), "intermediate": {
        **trial.intermediate, event.data.epoch: value}})
    earlier = [t for t in state.trials if t.wave < trial.wave]
    last = event.data.epoch >= event.data.epochs  # nothing left to save: let it complete
    if last or not should_prune(plan, trial, earlier):
        return Decision(_replace(state, trial))
    note = f"pruned at epoch {event.data.epoch}: {plan.objective} {value:.4g} below the median"
    trial = trial.model_copy(update={"state": "pruned", "value": value, "note": note})
    state = _replace(state, trial)
    out: list[Envelope] = [cancel_child(state, trial, note), progress(state)]
    return advance(state, now, out)


def on_trial_event(state: SearchState, event: Envelope, now: datetime) -> Decision | None:
    """One event of a trial; ``None`` when it changes nothing."""
    number = trial_number(event.subject)
    trial = next((t for t in state.trials if t.number == number
                  and t.task_id == event.subject), None)
    if trial is None or trial.state != "running" or state.status != "running":
        return None
    if isinstance(event, TaskProgressEvent):
        return on_progress(state, trial, event, now)
    ended = trial_end(trial, event, _plan(state).objective)
    if ended is None:
        return None
    state = _replace(state, ended)
    return advance(state, now, [progress(state)])


def trial_end(trial: SearchTrial, event: Envelope, objective: str) -> SearchTrial | None:
    if isinstance(event, TaskCompletedEvent):
        value = event.data.metrics.get(objective)
        if value is None:
            return trial.model_copy(update={"state": "failed", "metrics": event.data.metrics,
                                            "note": f"reported no {objective}"})
        return trial.model_copy(update={"state": "complete", "value": value,
                                        "metrics": event.data.metrics,
                                        "artifacts": event.data.artifacts})
    if isinstance(event, TaskFailedEvent):
        note = f"failed: {event.data.code}: {event.data.message}"
    elif isinstance(event, TaskRejectedEvent):
        note = "rejected: " + "; ".join(f"{e.field}: {e.message}" for e in event.data.errors)
    elif isinstance(event, TaskCancelledEvent):
        note = f"cancelled by {event.data.by}"
    else:
        return None
    return trial.model_copy(update={"state": "failed", "note": note[:500]})


def decide(state: SearchState | None, event: Envelope, now: datetime) -> Decision | None:
    """What ``event`` changes in the search it belongs to; ``None``: nothing."""
    if isinstance(event, TaskReadyEvent):
        if state is None and event.data.search is not None:
            return start(event, now)
        return None
    if state is None:
        return None
    if event.subject == state.task_id:
        if isinstance(event, TaskCancelRequestedEvent) \
                and event.taskgeneration >= state.generation:
            return cancel(state, event)
        return None
    decision = on_trial_event(state, event, now)
    if decision is None and state.status == "running" and now >= state.deadline:
        return advance(state, now)
    return decision
