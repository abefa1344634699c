"""Derived Idempotency-Key ids without a server: the derivation, when the scheme runs,
and the verdict an id's first ``task.requested`` gives a request of its key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.js.api import RawStreamMsg

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
    ids = KeyedIds(SECRET, 60.0, 600.0)
    base = ids.task_id("acme", "k1", 5)
    assert base == ids.task_id("acme", "k1", 5) and len(base) == 32
    int(base, 16)  # hex, as a drawn id
    others = {ids.task_id("acme", "k2", 5), ids.task_id("other", "k1", 5),
              ids.task_id("acme", "k1", 6), KeyedIds(bytes(32), 60.0, 600.0).task_id(
                  "acme", "k1", 5),
              # the separator cannot be forged by moving characters between fields
              ids.task_id("acme", "5\nk1", 0)}
    assert base not in others and len(others) == 5


def test_epochs_and_their_first_window() -> None:
    ids = KeyedIds(SECRET, 60.0, 600.0)
    assert ids.epoch(1200.0) == 2 and ids.epoch(1799.9) == 2
    assert ids.in_first_window(1200.0) and ids.in_first_window(1259.9)
    assert not ids.in_first_window(1260.0) and not ids.in_first_window(1799.0)


def test_the_scheme_needs_a_secret_and_a_stream_that_outlives_an_epoch_and_a_window(
        tmp_path: Any) -> None:
    settings = Settings(store_dir=tmp_path)  # 30 days kept, a day's window
    made = KeyedIds.for_gateway(settings, SECRET)
    assert made == KeyedIds(SECRET, 86_400.0, EPOCH_S)
    assert KeyedIds.for_gateway(settings, None) is None
    short = Settings(store_dir=tmp_path, stream_max_age_days=EPOCH_S / 86_400 + 0.5)
    assert KeyedIds.for_gateway(short, SECRET) is None
    enough = Settings(store_dir=tmp_path, stream_max_age_days=EPOCH_S / 86_400 + 1)
    assert KeyedIds.for_gateway(enough, SECRET) is not None


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
