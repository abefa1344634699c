"""The typed subscriber without a server: decode once, handle, publish, then settle."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from infra.bus.consumer import RetryPlan
from infra.bus.subscriber import (
    DecodeCache,
    Delivery,
    Subscriber,
    event_decoder,
    handle_message,
    model_decoder,
    task_of_subject,
)
from infra.errors import Fenced, PermanentError, PoisonMessage, Superseded, TransientError
from schemas.events import (
    Envelope,
    TaskCompleted,
    TaskCompletedEvent,
    TaskFailedEvent,
    TaskReadyEvent,
    TaskRequestedEvent,
    encode_event,
)
from schemas.webhooks import WebhookJob
from tests.support.factories import request
from tests.support.fake_bus import FakeJetStream, FakeMsg

TASK = "a" * 32
PLAN = RetryPlan(stream="TASKS", consumer="runner", max_deliver=3, delays_s=(2.0, 5.0))


def _requested(task_id: str = TASK) -> TaskRequestedEvent:
    return TaskRequestedEvent(source="test", subject=task_id, data=request(task_id=task_id))


def _completed(task_id: str = TASK) -> TaskCompletedEvent:
    return TaskCompletedEvent(source="test", subject=task_id, data=TaskCompleted(
        task_id=task_id, metrics={"auc": 0.9}, artifacts=[], duration_s=1.0))


class Recorder:
    """A handler that records its calls and returns (or raises) what it is told."""

    def __init__(self, returns: Sequence[Envelope] = (), raises: BaseException | None = None
                 ) -> None:
        self.returns, self.raises = list(returns), raises
        self.calls: list[tuple[Any, Delivery]] = []

    async def __call__(self, event: Any, delivery: Delivery) -> Sequence[Envelope]:
        self.calls.append((event, delivery))
        if self.raises is not None:
            raise self.raises
        return self.returns


async def _handle(sub: Subscriber[Any], msg: FakeMsg, js: FakeJetStream | None = None,
                  plan: RetryPlan = PLAN) -> tuple[str, FakeJetStream]:
    js = js or FakeJetStream(timeline=msg.timeline)
    outcome = await handle_message(js.as_js(), sub, msg.as_msg(), plan)
    return outcome, js


# --- undecodable messages: one policy ---------------------------------------------------


async def test_undecodable_task_message_is_dead_lettered_and_fails_its_task() -> None:
    handler = Recorder()
    sub = Subscriber("runner", event_decoder(TaskReadyEvent), handler)
    msg = FakeMsg(f"tasks.ready.{TASK}", b'{"type": "radtrain.task.ready.v1", "data": {}}',
                  attempt=2)
    outcome, js = await _handle(sub, msg)
    assert outcome == "dead_letter" and handler.calls == []
    kind, reason = msg.outcome  # type: ignore[misc]
    assert kind == "term"
    assert reason.startswith(f"dead-letter invalid_event: tasks.ready.{TASK}: ")
    assert "validation error" in reason and "\n" not in reason
    [failed] = js.on("tasks.failed.")
    assert failed.subject == f"tasks.failed.{TASK}" and failed.msg_id == f"{TASK}:failed"
    event = failed.event()
    assert isinstance(event, TaskFailedEvent)
    assert (event.data.code, event.data.retryable, event.data.attempt) == (
        "invalid_event", False, 2)
    assert event.data.message.startswith(f"runner could not read tasks.ready.{TASK}")
    assert msg.timeline == [f"publish tasks.failed.{TASK}", "term"]


@pytest.mark.parametrize("subject", ["webhooks.jobs.default.w1", "tasks.ready.not an id!",
                                     "tasks.ready", "$JS.EVENT.ADVISORY.CONSUMER.X.TASKS.c"])
async def test_undecodable_message_without_a_task_is_only_dead_lettered(subject: str) -> None:
    sub = Subscriber("webhook-deliveries", model_decoder(WebhookJob), Recorder())
    msg = FakeMsg(subject, b"\x00not json")
    outcome, js = await _handle(sub, msg)
    assert outcome == "dead_letter" and js.published == []
    assert msg.outcome is not None and msg.outcome[0] == "term"
    assert msg.outcome[1].startswith(f"dead-letter invalid_event: {subject}: ")


async def test_wrong_event_type_names_what_was_expected() -> None:
    sub = Subscriber("runner", event_decoder(TaskReadyEvent), Recorder())
    msg = FakeMsg(f"tasks.ready.{TASK}", encode_event(_requested()))
    outcome, js = await _handle(sub, msg)
    assert outcome == "dead_letter"
    assert msg.outcome is not None
    assert "expected a task.ready event, got radtrain.task.requested.v1" in msg.outcome[1]
    assert [p.msg_id for p in js.published] == [f"{TASK}:failed"]


async def test_no_failure_for_a_task_the_stream_already_finished() -> None:
    js = FakeJetStream()
    js.holds(_completed())
    sub = Subscriber("projector", event_decoder(), Recorder())
    msg = FakeMsg(f"tasks.progress.{TASK}", b"{}", timeline=js.timeline)
    outcome, _ = await _handle(sub, msg, js)
    assert outcome == "dead_letter" and js.on("tasks.failed.") == []


async def test_a_bad_message_of_a_reopened_task_fails_that_generation() -> None:
    """Generation 1 completed, on-call re-opened the task: an unreadable generation-2
    message must fail generation 2, not hide behind generation 1's end."""
    js = FakeJetStream()
    js.holds(_completed())
    sub = Subscriber("projector", event_decoder(), Recorder())
    msg = FakeMsg(f"tasks.progress.{TASK}", b'{"taskgeneration": 2, "data": {}}',
                  timeline=js.timeline)
    outcome, _ = await _handle(sub, msg, js)
    assert outcome == "dead_letter"
    [failed] = js.on("tasks.failed.")
    assert failed.msg_id == f"{TASK}:failed:g2"
    event = failed.event()
    assert event.taskgeneration == 2


async def test_a_malformed_terminal_event_does_not_count_as_the_end() -> None:
    js = FakeJetStream()
    await js.publish(f"tasks.completed.{TASK}", b"{broken")  # the bad message itself
    sub = Subscriber("projector", event_decoder(), Recorder())
    msg = FakeMsg(f"tasks.completed.{TASK}", b"{broken", seq=js.published[0].seq)
    await _handle(sub, msg, js)
    assert [p.msg_id for p in js.on("tasks.failed.")] == [f"{TASK}:failed"]


async def test_several_consumers_dead_lettering_one_message_fail_the_task_once() -> None:
    js = FakeJetStream()
    for durable in ("enrich", "projector", "webhooks"):
        sub = Subscriber(durable, event_decoder(), Recorder())
        outcome, _ = await _handle(sub, FakeMsg(f"tasks.requested.{TASK}", b"[]"), js)
        assert outcome == "dead_letter"
    assert len(js.on("tasks.failed.")) == 1


async def test_failure_that_cannot_be_published_is_retried_not_terminated() -> None:
    js = FakeJetStream(fail_publish=True)
    sub = Subscriber("runner", event_decoder(TaskReadyEvent), Recorder())
    msg = FakeMsg(f"tasks.ready.{TASK}", b"nope", timeline=js.timeline)
    outcome, _ = await _handle(sub, msg, js)
    # A TransientError naming no delay: the consumer's schedule, first entry.
    assert outcome == "nak" and msg.outcome == ("nak", PLAN.delays_s[0])


# --- handled messages ---------------------------------------------------------------


async def test_decoded_once_and_returned_events_published_before_the_ack() -> None:
    out = [_completed(), TaskCompletedEvent.model_validate(_completed("b" * 32).model_dump())]
    handler = Recorder(returns=out)
    sub = Subscriber("runner", event_decoder(TaskRequestedEvent), handler)
    msg = FakeMsg(f"tasks.requested.{TASK}", encode_event(_requested()), attempt=3, seq=42)
    outcome, js = await _handle(sub, msg)
    assert outcome == "ack"
    [(event, delivery)] = handler.calls
    assert isinstance(event, TaskRequestedEvent) and event.subject == TASK
    assert (delivery.subject, delivery.attempt, delivery.plan) == (msg.subject, 3, PLAN)
    assert delivery.plan.is_last(delivery.attempt)
    assert msg.timeline == [f"publish tasks.completed.{TASK}",
                            f"publish tasks.completed.{'b' * 32}", "ack"]
    assert [p.msg_id for p in js.published] == [f"{TASK}:completed", f"{'b' * 32}:completed"]


async def test_publish_failure_naks_and_never_acks() -> None:
    js = FakeJetStream(fail_publish=True)
    sub = Subscriber("enrich", event_decoder(), Recorder(returns=[_completed()]))
    msg = FakeMsg(f"tasks.requested.{TASK}", encode_event(_requested()), timeline=js.timeline)
    outcome, _ = await _handle(sub, msg, js)
    assert outcome == "nak" and msg.settled == [("nak", PLAN.delays_s[0])]
    assert js.published == []


@pytest.mark.parametrize(("error", "attempt", "outcome", "settled"), [
    (Superseded("done"), 1, "superseded", ("ack", None)),
    (PermanentError("dataset_missing", "gone"), 1, "term", ("term", "dataset_missing: gone")),
    (PoisonMessage("invalid_event", "x\ny"), 1, "dead_letter",
     ("term", "dead-letter invalid_event: x y")),
    (TransientError("kv_unavailable", "down", delay_s=7.0), 1, "nak", ("nak", 7.0)),
    (TransientError("kv_unavailable", "down", delay_s=7.0), 3, "nak", ("nak", 0.0)),
    (RuntimeError("boom"), 1, "nak", ("nak", 2.0)),
    (RuntimeError("boom"), 2, "nak", ("nak", 5.0)),
    (RuntimeError("boom"), 3, "nak", ("nak", 0.0)),
])
async def test_typed_errors_decide_the_settlement(error: Exception, attempt: int, outcome: str,
                                                  settled: tuple[str, Any]) -> None:
    sub = Subscriber("enrich", event_decoder(), Recorder(returns=[_completed()], raises=error))
    msg = FakeMsg(f"tasks.requested.{TASK}", encode_event(_requested()), attempt=attempt)
    got, js = await _handle(sub, msg)
    assert (got, msg.outcome) == (outcome, settled)
    assert js.published == []


async def test_fenced_settles_nothing() -> None:
    sub = Subscriber("runner", event_decoder(), Recorder(raises=Fenced("newer attempt")))
    msg = FakeMsg(f"tasks.requested.{TASK}", encode_event(_requested()), attempt=2)
    outcome, js = await _handle(sub, msg)
    assert outcome == "fenced" and msg.settled == [] and js.published == []


async def test_delivery_heartbeats_through_the_message() -> None:
    async def handler(event: Any, delivery: Delivery) -> list[Envelope]:
        await delivery.in_progress()
        await delivery.in_progress()
        return []

    msg = FakeMsg(f"tasks.requested.{TASK}", encode_event(_requested()))
    outcome, _ = await _handle(Subscriber("runner", event_decoder(), handler), msg)
    assert outcome == "ack" and msg.heartbeats == 2


def test_decoders_and_subjects() -> None:
    job = {"delivery_id": "d1", "webhook_id": "w1", "tenant": "default", "task_id": TASK,
           "event_type": "task.completed", "body": "{}", "first_at": "2026-01-01T00:00:00Z"}
    assert model_decoder(WebhookJob)(json.dumps(job).encode()).webhook_id == "w1"
    with pytest.raises(ValueError):
        model_decoder(WebhookJob)(b"{}")
    raw = encode_event(_requested())
    assert isinstance(event_decoder()(raw), TaskRequestedEvent)
    assert isinstance(event_decoder(TaskReadyEvent, TaskRequestedEvent)(raw), TaskRequestedEvent)
    with pytest.raises(ValueError, match=r"expected a task\.ready or task\.completed event"):
        event_decoder(TaskReadyEvent, TaskCompletedEvent)(raw)
    assert task_of_subject(f"tasks.ready.{TASK}") == TASK
    assert task_of_subject(f"dlq.runner.{TASK}") is None


# --- decoded once per process; skipped undecoded -----------------------------------------


def test_consumers_sharing_a_cache_decode_the_same_bytes_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import infra.bus.subscriber as subscriber

    parsed: list[bytes] = []
    real = subscriber.parse_event

    def counting(raw: bytes | str) -> Any:
        parsed.append(raw if isinstance(raw, bytes) else raw.encode())
        return real(raw)

    monkeypatch.setattr(subscriber, "parse_event", counting)
    one, two, three = (encode_event(_requested(c * 32)) for c in "abc")
    cache = DecodeCache(max_bytes=len(one) * 2 + 10)
    projector, index = event_decoder(cache=cache), event_decoder(cache=cache)
    enrich = event_decoder(TaskRequestedEvent, cache=cache)
    assert projector(one) is index(one) is enrich(bytes(bytearray(one)))  # an equal copy
    assert len(parsed) == 1
    index(two), index(three)  # the cache holds 2 of these: ``one`` is the oldest and goes
    assert len(parsed) == 3 and cache.held == len(two) + len(three)
    projector(one)
    assert len(parsed) == 4
    with pytest.raises(ValueError):
        projector(b'{"type": "radtrain.task.ready.v1"}')
    with pytest.raises(ValueError):  # a refused message is refused again, not remembered
        index(b'{"type": "radtrain.task.ready.v1"}')
    with pytest.raises(ValueError, match=r"expected a task\.ready event"):
        event_decoder(TaskReadyEvent, cache=cache)(one)
    uncached = event_decoder(cache=DecodeCache(max_bytes=0))
    uncached(one), uncached(one)
    assert len(parsed) == 8


async def test_a_skipped_message_is_acked_without_decoding_or_handling() -> None:
    handler = Recorder()

    def refuse(raw: bytes) -> Any:
        raise AssertionError("decoded")

    sub = Subscriber("search", refuse, handler, skip=lambda m: m.subject.startswith("tasks.p"))
    msg = FakeMsg(f"tasks.progress.{TASK}", b"not even json")
    outcome, js = await _handle(sub, msg)
    assert (outcome, msg.outcome, handler.calls, js.published) == ("skipped", ("ack", None),
                                                                   [], [])
    kept = Subscriber("search", event_decoder(), handler, skip=lambda m: False)
    outcome, _ = await _handle(kept, FakeMsg(f"tasks.requested.{TASK}",
                                             encode_event(_requested())))
    assert outcome == "ack" and len(handler.calls) == 1
