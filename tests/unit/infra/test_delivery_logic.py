"""Pure logic of delivery guarantees: retry plans, dead letters, replay, idempotency, health."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from nats.js.api import RawStreamMsg

from gateway.idempotency import body_digest, kv_key
from handlers.dead_letter_forwarder import error_text, failure_event, wants_dead_letter
from infra.bus import dead_letters as dlq
from infra.bus.consumer import RetryPlan, term_reason
from infra.bus.topology import (
    ENRICH,
    PROJECTOR,
    RETRY_DELAYS_S,
    RUNNER_PREFIX,
    consumer_configs,
    is_runner_consumer,
    parse_retry_metadata,
    retry_metadata,
)
from infra.errors import PermanentError, PoisonMessage
from infra.settings import Settings
from radtrain.oncall import replay
from radtrain.oncall.health import ConsumerHealth, Health, StreamHealth, assess
from schemas.tasks import TaskRequest

TASK = "a" * 32


def _max(consumer: str = ENRICH, seq: int = 7, n: int = 5) -> dlq.Advisory:
    return dlq.parse_advisory(json.dumps({
        "type": "io.nats.jetstream.advisory.v1.max_deliver", "id": "x", "timestamp": "t",
        "stream": "TASKS", "consumer": consumer, "stream_seq": seq, "deliveries": n}).encode())


def _original(seq: int = 7, subject: str = f"tasks.requested.{TASK}") -> RawStreamMsg:
    return RawStreamMsg(subject=subject, seq=seq, data=b'{"x": 1}',
                        headers={"Nats-Msg-Id": f"{TASK}:requested", "traceparent": "00-ab"},
                        time=datetime(2026, 1, 2, tzinfo=UTC))


# --- retry schedule ---------------------------------------------------------------


def test_retry_plan_follows_the_schedule_and_settles_the_last_try_at_once() -> None:
    plan = RetryPlan(max_deliver=5, delays_s=(2.0, 5.0, 15.0))
    assert [plan.delay(n) for n in (1, 2, 3, 4)] == [2.0, 5.0, 15.0, 15.0]
    assert plan.delay(5) == 0.0 and plan.is_last(5) and not plan.is_last(4)
    assert plan.delay(2, wanted=9.0) == 9.0 and plan.delay(5, wanted=9.0) == 0.0
    unbounded = RetryPlan(max_deliver=-1, delays_s=(1.0,))
    assert not unbounded.is_last(10_000) and unbounded.delay(10_000) == 1.0


def test_every_consumer_has_max_deliver_and_a_schedule_and_no_server_backoff() -> None:
    settings = Settings(retry_delay_scale=0.1)
    for name, cfg in consumer_configs(settings).items():
        assert cfg.max_deliver is not None and cfg.max_deliver != 0, name
        assert cfg.backoff == [], name  # the server would distort nak delays with it
        delays = parse_retry_metadata(cfg.metadata)
        key = RUNNER_PREFIX if is_runner_consumer(name) else name
        assert delays == tuple(round(d * 0.1, 3) for d in RETRY_DELAYS_S[key]), name
        if is_runner_consumer(name):
            # The runner's failure budget is the runs ledger's (runner_max_failures, counted
            # per task); max_deliver is only a backstop well above it, so that graceful
            # preemptions (SIGTERM, which cost no failure) never exhaust the deliveries.
            assert cfg.max_deliver == settings.runner_max_deliver, name
            assert cfg.max_deliver >= settings.runner_max_failures + 5 + 1, name
            assert len(delays) >= settings.runner_max_failures - 1, name
        elif cfg.max_deliver > 0:
            assert len(delays) >= cfg.max_deliver - 1, name
    assert parse_retry_metadata(retry_metadata(ENRICH, Settings())) == RETRY_DELAYS_S[ENRICH]
    assert parse_retry_metadata({"radtrain.retry_delays_s": "x"}) == ()


def test_only_poison_terms_ask_for_a_dead_letter() -> None:
    assert term_reason(PoisonMessage("invalid_event", "bad\nbytes")).startswith(
        "dead-letter invalid_event: bad bytes")
    assert term_reason(PermanentError("dataset_missing", "gone")) == "dataset_missing: gone"


# --- dead letters -------------------------------------------------------------------


def test_advisories_parse_and_junk_is_refused() -> None:
    adv = _max()
    assert (adv.kind, adv.stream, adv.consumer, adv.stream_seq, adv.deliveries) == (
        "max_deliveries", "TASKS", ENRICH, 7, 5)
    term = dlq.parse_advisory(json.dumps({
        "type": "io.nats.jetstream.advisory.v1.terminated", "stream": "TASKS",
        "consumer": PROJECTOR, "stream_seq": 3, "deliveries": 1,
        "reason": "dead-letter invalid_event: x"}).encode())
    assert wants_dead_letter(adv) and wants_dead_letter(term)
    assert not wants_dead_letter(dlq.Advisory("terminated", "TASKS", ENRICH, 1, 1, "gone"))
    assert error_text(term, None) == "invalid_event: x"
    for junk in (b"{}", b"[]", b'{"type": "io.nats.jetstream.advisory.v1.max_deliver"}'):
        with pytest.raises(ValueError):
            dlq.parse_advisory(junk)


def test_dead_letter_names_its_original_and_keeps_its_bytes() -> None:
    letter = dlq.build_dead_letter(_max(), _original(), "unexpected: boom\r\nsecond line")
    assert letter.subject == f"dlq.{ENRICH}.{TASK}" and letter.data == b'{"x": 1}'
    h = letter.headers
    assert (h[dlq.H_STREAM], h[dlq.H_SEQ], h[dlq.H_CONSUMER], h[dlq.H_DELIVERIES]) == (
        "TASKS", "7", ENRICH, "5")
    assert h[dlq.H_SUBJECT] == f"tasks.requested.{TASK}" and h[dlq.H_REASON] == "max_deliveries"
    assert h[dlq.H_ERROR] == "unexpected: boom second line"
    assert h[dlq.H_MSG_ID] == f"{TASK}:requested" and h["traceparent"] == "00-ab"
    assert h["Nats-Msg-Id"] == f"dlq:TASKS:7:{ENRICH}"
    gone = dlq.build_dead_letter(_max(seq=9), None, "")
    assert gone.subject == f"dlq.{ENRICH}.unknown" and gone.headers[dlq.H_MISSING] == "true"
    assert "no error recorded" in gone.headers[dlq.H_ERROR]


def _runner_max(n: int) -> dlq.Advisory:
    """A runner pool's consumer ran out of deliveries on ``DISPATCH``."""
    return dlq.Advisory("max_deliveries", "DISPATCH", "runner-cpu", 7, n)


def test_dead_letters_of_task_owners_fail_the_task_others_do_not() -> None:
    original = _original(subject=f"dispatch.cpu.{TASK}")
    letter = dlq.build_dead_letter(_runner_max(3), original, "unexpected: oom")
    assert letter.subject == f"dlq.runner-cpu.{TASK}" and letter.headers[dlq.H_TASK] == TASK
    event = failure_event(_runner_max(3), letter, "unexpected: oom")
    assert event is not None and event.msg_id == f"{TASK}:failed"
    assert event.data.code == "dead_letter" and not event.data.retryable
    assert "runner-cpu gave up after 3 deliveries: unexpected: oom" == event.data.message
    assert dlq.owns_task("runner-gpu", "DISPATCH") and dlq.owns_task("dispatch", "TASKS")
    assert not dlq.owns_task("runner-cpu", "WEBHOOKS") and not dlq.owns_task("webhooks", "TASKS")
    projector = _max(PROJECTOR)
    assert failure_event(projector, dlq.build_dead_letter(projector, _original(), ""), "") is None


def test_redrive_republishes_the_original_with_a_fresh_id_naming_both_copies() -> None:
    built = dlq.build_dead_letter(_max(), _original(), "e")
    stored = dlq.StoredDeadLetter(seq=12, time=None, subject=built.subject, data=built.data,
                                  headers=built.headers)
    subject, data, headers = stored.redrive_message()
    assert subject == f"tasks.requested.{TASK}" and data == b'{"x": 1}'
    assert headers["Nats-Msg-Id"] == f"{TASK}:requested:redrive:12"
    assert headers[dlq.REPLAY_OF] == "TASKS:7" and headers[dlq.REDRIVE_OF] == "DLQ:12"
    assert headers["traceparent"] == "00-ab"
    assert not [k for k in headers if k.startswith("Radtrain-Dlq-")]
    assert stored.summary()["original"] == "TASKS:7"


def test_task_of_reads_subjects_and_job_bodies() -> None:
    assert dlq.task_of(f"tasks.ready.{TASK}", None) == TASK
    assert dlq.task_of("webhooks.jobs.t.w", json.dumps({"task_id": TASK}).encode()) == TASK
    assert dlq.task_of("tasks.ready.bad id", b"garbage") is None


# --- replay ---------------------------------------------------------------------------


def test_replay_selection_is_validated() -> None:
    assert replay.parse_seq_range("3:9") == (3, 9)
    for bad in ("9:3", "0:2", "a:b", "5"):
        with pytest.raises(ValueError):
            replay.parse_seq_range(bad)
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert replay.parse_since("2h", now) == now - timedelta(hours=2)
    assert replay.parse_since("2026-03-01T10:00:00Z") == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert replay.parse_since("2026-03-01T10:00:00").tzinfo is not None
    with pytest.raises(ValueError):
        replay.parse_since("yesterday-ish")
    with pytest.raises(ValueError):
        replay.Selection()
    with pytest.raises(ValueError):
        replay.Selection(task_id=TASK, seq_from=1, seq_to=2)
    with pytest.raises(ValueError):
        replay.Selection(task_id=TASK, types=("finished",))
    sel = replay.Selection(task_id=TASK, types=("ready",))
    assert sel.subject() == f"tasks.ready.{TASK}"
    wide = replay.Selection(seq_from=1, seq_to=5, types=("ready", "requested"))
    assert wide.subject() == "tasks.*.*" and wide.wants("tasks.requested.x")
    assert not wide.wants("tasks.progress.x")


def test_replayed_copy_names_the_original_and_escapes_deduplication() -> None:
    subject, data, headers = replay.replay_message(_original(seq=41), token="run1")
    assert subject == f"tasks.requested.{TASK}" and data == b'{"x": 1}'
    assert headers[dlq.REPLAY_OF] == "TASKS:41"
    assert headers["Nats-Msg-Id"] == f"{TASK}:requested:replay:run1"
    assert headers["traceparent"] == "00-ab"


def test_diff_lists_leaf_changes_with_paths() -> None:
    before = {"model": {"entry_id": "a", "num_classes": 2}, "classes": ["x", "y"], "old": 1}
    after = {"model": {"entry_id": "b", "num_classes": 2}, "classes": ["x", "z"], "new": 2}
    got = {d.path: (d.before, d.after) for d in replay.diff(before, after)}
    assert got == {"model.entry_id": ("a", "b"), "classes[1]": ("y", "z"), "old": (1, None),
                   "new": (None, 2)}
    assert replay.diff(before, before) == []
    assert replay.diff([1], [1, 2]) == [replay.Difference("(root)", [1], [1, 2])]


# --- idempotency and health ----------------------------------------------------------


def test_request_digest_ignores_spelling_not_content() -> None:
    a = TaskRequest.model_validate_json(
        '{"name": "n", "flow": "general", "dataset_id": "d", "task_type": "classification"}')
    b = TaskRequest.model_validate_json(
        '{"task_type":"classification","dataset_id":"d","flow":"general","name":"n"}')
    c = TaskRequest.model_validate_json(
        '{"name": "m", "flow": "general", "dataset_id": "d", "task_type": "classification"}')
    assert body_digest(a) == body_digest(b) != body_digest(c)
    assert kv_key("t1", "any key: with spaces/und ü") == kv_key("t1", "any key: with spaces/und ü")
    assert kv_key("t1", "k").startswith("t1.") and kv_key("t1", "k") != kv_key("t2", "k")


def test_health_assessment_points_at_what_needs_a_person() -> None:
    health = Health(streams=[StreamHealth("DLQ", 2, 100, 1, 2)], consumers=[
        ConsumerHealth("DISPATCH", "runner-cpu", pending=3, ack_pending=0, redelivered=0,
                       waiting=0, max_deliver=3, oldest_unacked_seq=5, oldest_unacked_age_s=3600.0),
        ConsumerHealth("TASKS", ENRICH, pending=0, ack_pending=1, redelivered=1, waiting=1,
                       max_deliver=5)], missing=["WEBHOOKS"])
    problems = assess(health)
    assert problems[0].startswith("stream WEBHOOKS missing")
    assert any("2 dead letter" in p for p in problems)
    assert any(p.startswith("runner-cpu: oldest unacked") and "60 min" in p for p in problems)
    assert any(p.startswith("runner-cpu: 3 message(s) waiting") for p in problems)
    assert any(p.startswith("enrich: 1 message(s) being redelivered") for p in problems)
    assert assess(Health(streams=[StreamHealth("DLQ", 0, 0, 0, 0)])) == []
    assert health.as_dict()["dlq_size"] == 2
