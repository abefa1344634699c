"""Derived Idempotency-Key ids without a server: the derivation, when the scheme runs,
and the verdict an id's first ``task.requested`` gives a request of its key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.js.api import RawStreamMsg, StreamConfig

from gateway.keyed_ids import EPOCH_S, KeyedIds, judge
from infra.settings import Settings
from schemas.admission import request_digest
from schemas.events import TaskRequestedEvent, encode_event
from schemas.tasks import TaskRequest, TaskRequested

BODY: dict[str, Any] = {
    "name": "k", "flow": "general", "task_type": "classification", "dataset_id": "ds1",
    "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
}
DIGEST = request_digest(TaskRequest.model_validate(BODY))
SECRET = bytes(range(32))
T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def first(tenant: str, at: datetime, body: dict[str, Any] = BODY) -> RawStreamMsg:
    event = TaskRequestedEvent(source="t", subject="a" * 32, data=TaskRequested(
        **TaskRequest.model_validate(body).model_dump(), task_id="a" * 32, tenant=tenant,
        idempotency_key="k"))
    return RawStreamMsg(subject="tasks.requested." + "a" * 32, seq=1,
                        data=encode_event(event), time=at)


def test_the_id_depends_on_secret_tenant_key_and_epoch() -> None:
    ids = KeyedIds(SECRET, 60.0, 600.0, 0.0, 0.0)
    base = ids.task_id("acme", "k1", 5)
    assert base == ids.task_id("acme", "k1", 5) and len(base) == 32
    int(base, 16)  # hex, as a drawn id
    others = {ids.task_id("acme", "k2", 5), ids.task_id("other", "k1", 5),
              ids.task_id("acme", "k1", 6), KeyedIds(bytes(32), 60.0, 600.0, 0.0, 0.0).task_id(
                  "acme", "k1", 5),
              # the separator cannot be forged by moving characters between fields
              ids.task_id("acme", "5\nk1", 0)}
    assert base not in others and len(others) == 5


def test_epochs_their_first_window_and_the_band() -> None:
    ids = KeyedIds(SECRET, 60.0, 600.0, origin_s=100.0, band_s=30.0)
    assert ids.epoch(1300.0) == 2 and ids.epoch(1899.9) == 2 and ids.epoch(99.0) == -1
    # the window, plus the band: last epoch's id may have been stored that late
    assert ids.in_first_window(1300.0) and ids.in_first_window(1389.9)
    assert not ids.in_first_window(1390.0) and not ids.in_first_window(1899.0)
    # the band: from 30 s before an epoch's start to the end of its first window
    assert [ids.in_band(t) for t in (1869.9, 1870.0, 1900.0, 1989.9, 1990.0)] == [
        False, True, True, True, False]


def stream(**limits: Any) -> StreamConfig:
    return StreamConfig(name="TASKS", max_age=limits.pop("max_age", 30 * 86_400.0),
                        **limits)


def test_the_scheme_needs_a_seal_key_and_a_stream_that_keeps_an_epoch_and_a_window(
        tmp_path: Any) -> None:
    settings = Settings(store_dir=tmp_path)  # a day's window
    made = KeyedIds.for_stream(settings, SECRET, stream())
    assert made is not None and (made.ttl_s, made.epoch_s) == (86_400.0, EPOCH_S)
    assert made.secret not in (SECRET, KeyedIds.for_stream(settings, bytes(32), stream()))
    assert KeyedIds.for_stream(settings, SECRET, stream(max_age=0.0)) is not None  # for ever
    assert KeyedIds.for_stream(settings, None, stream()) is None
    short = EPOCH_S + 86_400.0 - 1
    assert KeyedIds.for_stream(settings, SECRET, stream(max_age=short)) is None
    assert KeyedIds.for_stream(settings, SECRET, stream(max_age=short + 1)) is not None
    for limit in ({"max_msgs": 10**9}, {"max_bytes": 10**12}, {"max_msgs_per_subject": 5}):
        assert KeyedIds.for_stream(settings, SECRET, stream(**limit)) is None, limit
    unlimited = {"max_msgs": -1, "max_bytes": -1, "max_msgs_per_subject": -1}
    assert KeyedIds.for_stream(settings, SECRET, stream(**unlimited)) is not None
    # a window longer than an epoch would span three epochs: only last epoch's is read
    week = Settings(store_dir=tmp_path, idempotency_ttl_s=EPOCH_S + 1)
    assert KeyedIds.for_stream(week, SECRET, stream(max_age=0.0)) is None


@pytest.mark.parametrize(("found", "verdict"), [
    (None, "absent"),
    (first("acme", T0), "replay"),
    (first("acme", T0, {**BODY, "dataset_id": "ds2"}), "conflict"),
    (first("other", T0), "spent"),  # another tenant's: never replayed, never a 409
    (first("acme", T0 - timedelta(seconds=60)), "spent"),  # out of its window
    (first("acme", T0 - timedelta(seconds=59)), "replay"),
])
def test_the_verdict_of_an_ids_first_request(found: RawStreamMsg | None, verdict: str
                                             ) -> None:
    assert judge(found, "acme", DIGEST, T0, 60.0) == verdict
