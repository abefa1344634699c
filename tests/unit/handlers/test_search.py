"""Hyperparameter search (issue 18): the plan (enrich), the pure state machine with a fake
trainer (determinism, waves, pruning, budget, cancel), and the KV/publish glue (a
handler that dies between publishing and writing its record repeats no trial)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from pydantic import ValidationError

from handlers.enrich import Rejected, WeightsRef, enrich
from handlers.search.core import Decision, decide, parent_of
from handlers.search.handler import (
    SearchRepo,
    handle_search_event,
    not_for_search,
    search_lane,
    search_of,
)
from handlers.search.results import importance_plot, result_files
from handlers.search.study import importances
from infra.admission import AdmissionRepo
from infra.bus.names import KV_ADMISSIONS, KV_SEARCHES, KV_TASKS
from infra.errors import TransientError
from infra.store import ObjectStore
from schemas.events import (
    Artifact,
    Envelope,
    TaskCancelRequested,
    TaskCancelRequestedEvent,
    TaskCompleted,
    TaskCompletedEvent,
    TaskProgress,
    TaskProgressEvent,
    TaskReadyEvent,
    TaskRequestedEvent,
    encode_event,
    parse_event,
)
from schemas.search_state import SearchState
from schemas.spec import TrainingSpec
from schemas.tasks import ManualTuning
from tests.support import fake_bus, fake_kv
from tests.support.factories import dataset, request

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPACE = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
         "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
         "augmentation": {"type": "categorical", "choices": ["none", "light", "strong"]}}


class Weights:
    def find(self, entry_id: str) -> WeightsRef | None:
        return WeightsRef(f"zoo/weights/{entry_id}.safetensors", "1" * 64)


def search_request(**tuning: Any) -> Any:
    body = {"mode": "search", "budget": {"trials": 6, "max_parallel": 2},
            "hyperparameters": {"epochs": 4}, "seed": 7, **tuning}
    return request(task_id="p1", tuning=body)


def parent_spec(**tuning: Any) -> TrainingSpec:
    return enrich(search_request(**tuning), dataset(), Weights())


def ready(spec: TrainingSpec) -> TaskReadyEvent:
    return TaskReadyEvent(source="test", subject=spec.task_id, data=spec)


# --- the plan -----------------------------------------------------------------------------


def test_default_space_is_derived_around_the_auto_recipe_which_is_trial_0() -> None:
    spec = parent_spec()
    plan = spec.search
    assert plan is not None and plan.objective == "auc" and plan.direction == "maximize"
    assert set(plan.space) == {"learning_rate", "weight_decay", "batch_size", "augmentation"}
    hp = spec.hyperparameters
    assert hp.epochs == 4 and hp.seed == 7  # fixed fields over the auto recipe
    assert plan.baseline is not None and plan.baseline["learning_rate"] == hp.learning_rate
    assert "trial 0 is the auto recipe" in spec.reasons["search"]


def test_space_bounds_are_checked_like_manual_tuning() -> None:
    with pytest.raises(ValidationError, match=r"space\.learning_rate"):
        search_request(space={"learning_rate": {"type": "float", "low": 1e-4, "high": 2.0}})
    with pytest.raises(ValidationError, match="not a searchable"):
        search_request(space={"epoch": {"type": "int", "low": 1, "high": 3}})
    with pytest.raises(ValidationError, match="both"):
        search_request(space={"epochs": {"type": "int", "low": 1, "high": 3}})
    with pytest.raises(Rejected) as rej:  # in bounds, but diverges with adamw
        enrich(search_request(space={"learning_rate": {"type": "float", "low": 1e-3,
                                                       "high": 0.1}}), dataset(), Weights())
    assert {(e.field, e.code) for e in rej.value.errors} == {
        ("tuning.space.learning_rate", "out_of_bounds")}


def test_network_choices_and_objective_are_checked() -> None:
    with pytest.raises(Rejected) as rej:
        enrich(search_request(objective="dice", space={"network": {
            "type": "categorical", "choices": ["resnet18", "no_such_net"]}}),
            dataset(), Weights())
    assert {(e.field, e.code) for e in rej.value.errors} == {
        ("tuning.space.network", "unknown_network"), ("tuning.objective", "unknown_metric")}


def test_specialized_flow_may_not_search_the_network() -> None:
    req = request(flow="specialized", preset="pneumothorax", task_type=None, model=None,
                  tuning={"mode": "search", "space": {"network": {
                      "type": "categorical", "choices": ["resnet18"]}}})
    with pytest.raises(Rejected) as rej:
        enrich(req, dataset(modality="CR", classes=["ptx", "normal"]), Weights())
    assert ("tuning.space.network", "not_allowed") in {(e.field, e.code)
                                                       for e in rej.value.errors}


# --- the state machine with a fake trainer ----------------------------------------------


def hp_of(event: TaskRequestedEvent) -> dict[str, Any]:
    assert isinstance(event.data.tuning, ManualTuning)
    return event.data.tuning.hyperparameters.model_dump(exclude_none=True)


def score(params: dict[str, Any], epoch: int) -> float:
    """A deterministic 'training': better near lr 3e-3 and batch 16, rising with epochs."""
    lr = float(params.get("learning_rate", 1e-3))
    bs = int(params.get("batch_size", 16))
    quality = 1.0 - abs(math.log10(lr / 3e-3)) / 3 - abs(bs - 16) / 64
    return round(max(0.0, quality) * (1 - 0.5 ** epoch), 6)


class FakeTrainer:
    """Runs each requested trial: one progress per epoch, then ``task.completed``. Which
    running trial reports next is drawn by ``rng``: timing differs from run to run."""

    def __init__(self, rng: random.Random, epochs: int = 4) -> None:
        self.rng, self.epochs = rng, epochs
        self.running: dict[str, tuple[dict[str, Any], int]] = {}
        self.cancelled: set[str] = set()

    def take(self, events: Sequence[Envelope]) -> None:
        for e in events:
            if isinstance(e, TaskRequestedEvent):
                params = hp_of(e)
                self.running[e.subject] = (params, 0)
            elif isinstance(e, TaskCancelRequestedEvent):
                self.cancelled.add(e.subject)

    def next_event(self) -> Envelope | None:
        live = sorted(t for t in self.running if t not in self.cancelled)
        if not live:
            return None
        task = self.rng.choice(live)
        params, epoch = self.running[task]
        epoch += 1
        metrics = {"auc": score(params, epoch), "val_loss": 1.0 / epoch}
        ext = {"searchparent": "p1"}
        if epoch == self.epochs:
            del self.running[task]
            return TaskCompletedEvent(source="runner", subject=task, **ext, data=TaskCompleted(
                task_id=task, metrics=metrics, duration_s=1.0, artifacts=[Artifact(
                    name="model.safetensors", key=f"runs/{task}/attempts/1/model.safetensors",
                    uri="file:///x", sha256="2" * 64, size=1)]))
        self.running[task] = (params, epoch)
        return TaskProgressEvent(source="runner", subject=task, **ext, data=TaskProgress(
            task_id=task, epoch=epoch, epochs=self.epochs, step=epoch, total_steps=self.epochs,
            metrics=metrics))


def run_search(seed: int, spec: TrainingSpec | None = None,
               clock: Callable[[int], datetime] = lambda i: T0) -> tuple[SearchState,
                                                                         list[Envelope]]:
    trainer = FakeTrainer(random.Random(seed))
    decision = decide(None, ready(spec or parent_spec()), T0)
    assert decision is not None
    state, published = decision.state, list(decision.events)
    trainer.take(decision.events)
    for i in range(1000):
        event = trainer.next_event()
        if event is None:
            break
        got: Decision | None = decide(state, event, clock(i))
        if got is not None:
            state = got.state
            published += got.events
            trainer.take(got.events)
    return state, published


def asked(published: list[Envelope]) -> list[tuple[str, dict[str, Any]]]:
    return [(e.subject, hp_of(e))
            for e in published if isinstance(e, TaskRequestedEvent)]


def test_same_seed_same_trials_in_the_same_order_whatever_the_timing() -> None:
    first, pub1 = run_search(seed=1)
    second, pub2 = run_search(seed=99)  # another interleaving of the runners' events
    assert asked(pub1) == asked(pub2)
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert [t.state for t in first.trials] == [t.state for t in second.trials]
    assert [t.task_id for t in first.trials] == [f"p1-t{k}" for k in range(6)]
    other, _ = run_search(seed=1, spec=parent_spec(seed=8))
    assert [t.params for t in other.trials][1:] != [t.params for t in first.trials][1:]


def test_waves_budget_pruning_and_the_best_trial() -> None:
    state, published = run_search(seed=3)
    assert state.status == "completed" and state.stop_reason == "trials"
    assert len(state.trials) == 6 and [t.wave for t in state.trials] == [0, 0, 1, 1, 2, 2]
    assert state.trials[0].params == state.spec.search.baseline  # type: ignore[union-attr]
    states = [t.state for t in state.trials]
    assert "pruned" in states, states
    for t in state.trials:
        if t.state == "pruned":
            assert t.wave > 0 and t.note.startswith("pruned at epoch")
            assert any(isinstance(e, TaskCancelRequestedEvent) and e.subject == t.task_id
                       for e in published)
    complete = [t for t in state.trials if t.state == "complete"]
    best = max(complete, key=lambda t: (t.value or 0.0, -t.number))
    assert state.best == best.number
    assert best.value is not None and best.value >= (state.trials[0].value or 0.0)
    kinds = [type(e).__name__ for e in published if e.subject == "p1"]
    assert kinds[0] == "TaskStartedEvent" and kinds.count("TaskProgressEvent") >= 6
    children = [e for e in published if isinstance(e, TaskRequestedEvent)]
    assert all(e.data.parent_task_id == "p1" and e.extensions["searchparent"] == "p1"
               for e in children)
    assert children[0].data.model is not None and children[0].data.tuning.mode == "manual"


def test_successive_halving_prunes_the_worse_half_at_each_rung() -> None:
    state, _ = run_search(seed=3, spec=parent_spec(pruner="successive_halving"))
    again, _ = run_search(seed=11, spec=parent_spec(pruner="successive_halving"))
    assert [t.state for t in state.trials] == [t.state for t in again.trials]
    pruned = [t for t in state.trials if t.state == "pruned"]
    assert pruned and all(t.wave > 0 and max(t.intermediate) in (1, 2, 4) for t in pruned)
    assert state.status == "completed" and state.best is not None


def test_max_hours_stops_running_trials_and_keeps_the_best() -> None:
    state, published = run_search(seed=2, clock=lambda i: T0 + timedelta(hours=30 if i > 3
                                                                            else 0))
    assert state.status == "completed" and state.stop_reason == "max_hours"
    assert len(state.trials) < 6
    stopped = [t for t in state.trials if t.state == "stopped"]
    assert stopped and all(any(isinstance(e, TaskCancelRequestedEvent)
                               and e.subject == t.task_id for e in published) for t in stopped)


def test_cancelling_the_parent_cancels_its_running_trials() -> None:
    decision = decide(None, ready(parent_spec()), T0)
    assert decision is not None
    cancel = TaskCancelRequestedEvent(source="gw", subject="p1", data=TaskCancelRequested(
        task_id="p1", by="api-key:k1"))
    got = decide(decision.state, cancel, T0)
    assert got is not None and got.state.status == "cancelled"
    names = [(type(e).__name__, e.subject) for e in got.events]
    assert names == [("TaskCancelRequestedEvent", "p1-t0"), ("TaskCancelRequestedEvent", "p1-t1"),
                     ("TaskCancelledEvent", "p1")]
    assert decide(got.state, cancel, T0) is not None  # idempotent: nothing more to cancel
    assert decide(got.state, cancel, T0).events == []  # type: ignore[union-attr]


def test_importances_and_plots_fall_back_gracefully() -> None:
    state, _ = run_search(seed=5)
    plan = state.spec.search
    assert plan is not None
    imp = importances(plan, state.trials)
    assert imp == importances(plan, state.trials)  # fixed seed
    assert importances(plan, state.trials[:1]) == {}
    files = result_files(state, imp)
    assert files["search_objective.png"].startswith(b"\x89PNG")
    assert importance_plot({}).startswith(b"\x89PNG")
    assert b'"trials"' in files["metrics.json"]


# --- the glue: KV record, admission, publish, restart -----------------------------------


class JS(fake_bus.FakeJetStream):
    def __init__(self) -> None:
        super().__init__()
        self.kv = fake_kv.FakeJetStream(KV_SEARCHES, KV_ADMISSIONS, KV_TASKS)

    async def key_value(self, bucket: str) -> fake_kv.FakeKeyValue:
        return await self.kv.key_value(bucket)


class Store:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> Any:
        import hashlib
        from types import SimpleNamespace
        self.objects[key] = data
        return SimpleNamespace(key=key, uri=f"mem://{key}", size=len(data),
                               sha256=hashlib.sha256(data).hexdigest())


async def test_a_handler_that_dies_before_writing_its_record_repeats_no_trial() -> None:
    js = JS()
    searches = await SearchRepo.open(js.as_js())
    admissions = await AdmissionRepo.open(js.as_js())
    store = Store()

    async def handle(event: Envelope, fail_write: bool = False) -> None:
        original = searches.compare_and_set
        if fail_write:  # the process dies after publishing, before its record is written
            async def boom(state: SearchState, revision: int) -> int | None:
                raise TimeoutError
            searches.compare_and_set = boom  # type: ignore[method-assign]
        try:
            await handle_search_event(parse_event(encode_event(event)), None,  # type: ignore[arg-type]
                                      js=js.as_js(), searches=searches,
                                      store=cast(ObjectStore, store),
                                      admissions=admissions, clock=lambda: T0)
        finally:
            searches.compare_and_set = original  # type: ignore[method-assign]

    start = ready(parent_spec())
    with pytest.raises(TransientError, match="TimeoutError"):
        await handle(start, fail_write=True)
    await handle(start)  # the redelivery
    await handle(start)  # and a duplicate: the record exists, nothing happens
    requested = js.on("tasks.requested.")
    assert [p.subject for p in requested] == ["tasks.requested.p1-t0", "tasks.requested.p1-t1"]
    trainer = FakeTrainer(random.Random(0))
    trainer.take([parse_event(p.data) for p in requested])
    seen = len(js.published)
    while (event := trainer.next_event()) is not None:
        await handle(event)
        new = [parse_event(p.data) for p in js.published[seen:]]
        seen = len(js.published)
        trainer.take(new)
    found = await searches.get("p1")
    assert found is not None and found[0].status == "completed"
    subjects = [p.subject for p in js.on("tasks.requested.")]
    assert subjects == [f"tasks.requested.p1-t{k}" for k in range(6)]  # none twice, none lost
    done = js.on("tasks.completed.p1")
    assert len(done) == 1
    names = {a.name for a in parse_event(done[0].data).data.artifacts}  # type: ignore[union-attr]
    assert {"model.safetensors", "metrics.json", "search_objective.png",
            "search_importance.png"} <= names
    assert "runs/p1/search/metrics.json" in store.objects


def test_lanes_and_parents() -> None:
    assert search_lane("tasks.progress.p1-t12") == "p1"
    assert search_lane("tasks.cancel_requested.p1") == "p1"
    event = TaskCancelRequestedEvent(source="x", subject="abc-t3", data=TaskCancelRequested(
        task_id="abc-t3", by="me"))
    assert parent_of(event) == "abc"


async def test_the_dispatcher_sends_no_search_parent_to_a_runner() -> None:
    from handlers.dispatch import handle_ready
    js = fake_bus.FakeJetStream()
    out = await handle_ready(ready(parent_spec()), None,  # type: ignore[arg-type]
                             js=js.as_js(), pools=[])
    assert out == [] and js.published == []


@pytest.mark.parametrize("flow", ["general", "specialized"])
def test_trials_are_ordinary_requests_that_enrich_accepts(flow: str) -> None:
    if flow == "general":
        req, ds = search_request(), dataset()
    else:
        req = request(task_id="p1", flow="specialized", preset="pneumothorax", task_type=None,
                      model=None, tuning={"mode": "search", "budget": {"trials": 2}})
        ds = dataset(modality="CR", classes=["ptx", "normal"])
    parent = enrich(req, ds, Weights())
    decision = decide(None, ready(parent), T0)
    assert decision is not None
    for event in decision.events:
        if isinstance(event, TaskRequestedEvent):
            child = enrich(event.data, ds, Weights())
            assert child.search is None and child.flow == flow
            assert child.model.entry_id == parent.model.entry_id
            values = child.hyperparameters.model_dump()
            trial = next(t for t in decision.state.trials if t.task_id == event.subject)
            assert {k: values[k] for k in trial.params} == trial.params
            assert {k: v for k, v in values.items() if k not in trial.params} == {
                k: v for k, v in parent.hyperparameters.model_dump().items()
                if k not in trial.params}


def test_only_events_no_search_could_want_are_skipped_undecoded() -> None:
    """The search consumer's prefilter (raw subject, headers, bytes) never skips an event
    its handler would look at (``search_of``): the parent's own, a trial's by its id or
    by the extension, however the extension travels."""
    from nats.aio.msg import Msg

    def progress(task: str, **ext: str) -> TaskProgressEvent:
        return TaskProgressEvent(source="runner", subject=task, **ext, data=TaskProgress(
            task_id=task, epoch=1, epochs=2, step=1, total_steps=2, metrics={}))

    plain = "a" * 32
    cases: list[tuple[str, bytes, dict[str, str] | None, bool]] = [
        (f"tasks.progress.{plain}", encode_event(progress(plain)), None, True),
        (f"tasks.completed.{plain}", encode_event(TaskCompletedEvent(
            source="runner", subject=plain, data=TaskCompleted(
                task_id=plain, metrics={}, artifacts=[], duration_s=1.0))), None, True),
        ("tasks.progress.p1-t3", encode_event(progress("p1-t3")), None, False),
        (f"tasks.progress.{plain}", encode_event(progress(plain, searchparent="p1")), None,
         False),
        (f"tasks.progress.{plain}", b'{"subject": "x", "\\u0073earchparent": "p1"}', None,
         False),
        (f"tasks.progress.{plain}", b"{}", {"ce-searchparent": "p1"}, False),
        (f"tasks.progress.{plain}", b"{}", {"CE-SearchParent": "p1"}, False),
        ("tasks.ready.p1", encode_event(ready(parent_spec())), None, False),
        ("tasks.cancel_requested.p1", encode_event(TaskCancelRequestedEvent(
            source="gateway", subject="p1", data=TaskCancelRequested(task_id="p1", by="u"))), None,
         False),
    ]
    for subject, data, headers, skipped in cases:
        msg = Msg(cast(Any, None), subject=subject, data=data, headers=headers)
        assert not_for_search(msg) is skipped, (subject, data[:60], headers)
        if skipped:
            assert search_of(parse_event(data)) is None
