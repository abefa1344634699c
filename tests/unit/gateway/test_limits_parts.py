"""Issue 17: the pieces of the limits, without servers (stream slots, address buckets,
preview sizes and cache index, redaction of error messages and log lines)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest

from gateway.artifacts import public_event, public_record
from gateway.errors import error_response, redact
from gateway.limits import StreamSlots
from gateway.previews import PREVIEW_SIZES, PreviewIndex, snap_size
from gateway.ratelimit import RateLimiter
from imaging.budget import DecodeBudget
from infra.telemetry.logging import ContextFilter, redact_credentials
from schemas.api import ErrorItem
from schemas.common import is_identifier
from schemas.events import Artifact
from schemas.record import TaskRecord


def test_stream_slots_cap_per_key_and_in_total_and_release() -> None:
    slots = StreamSlots(per_key=2, total=3)
    assert [slots.acquire("a") for _ in range(3)] == [None, None, "per_key"]
    assert slots.acquire("b") is None and slots.acquire("c") == "total" and slots.open == 3
    slots.release("a")
    assert slots.acquire("c") is None  # a released slot is free again
    for key in ("a", "b", "c"):
        slots.release(key)
    assert slots.open == 0 and slots.acquire("a") is None


def test_address_bucket_refunds_legitimate_requests() -> None:
    now = [0.0]
    limiter = RateLimiter(1.0, 2, clock=lambda: now[0])
    assert limiter.take("ip") == 0 and limiter.take("ip") == 0 and limiter.take("ip") > 0
    limiter.refund("ip")
    assert limiter.take("ip") == 0  # the refunded token


def test_preview_sizes_snap_up_to_the_fixed_list() -> None:
    assert [snap_size(n) for n in (32, 33, 100, 128, 129, 700, 1024)] == \
        [32, 64, 128, 128, 256, 1024, 1024]
    assert set(snap_size(n) for n in range(32, 1025)) == set(PREVIEW_SIZES)
    for bad in (31, 1025):
        with pytest.raises(ValueError):
            snap_size(bad)


def test_preview_index_evicts_least_recently_used_by_count_and_bytes() -> None:
    index = PreviewIndex(max_entries=3, max_bytes=100)
    assert index.add("a", 10) == [] and index.add("b", 10) == [] and index.add("c", 10) == []
    assert index.add("a", 10) == []  # a hit: "a" is the most recent now
    assert index.add("d", 10) == ["b"]
    assert index.add("e", 95) == ["c", "a", "d"]  # bytes: only what fits stays
    assert len(index) == 1 and index.bytes == 95
    assert index.add("huge", 500) == ["e"] and len(index) == 1  # the newest always stays


def test_redact_removes_internals_and_keeps_the_message() -> None:
    text = ("KV unavailable: NoRespondersError() at nats://svc:pw@127.0.0.1:4222; "
            "S3 https://key:secret@s3.example.com/b; file:///srv/store/x; /tmp/radtrain-1/a "
            "[::1]:8333; size must be between 32 and 1024; task 'a/b' not found")
    out = redact(text)
    for gone in ("NoRespondersError()", "nats://", "svc:pw", "127.0.0.1", "key:secret",
                 "file://", "/tmp/", "/srv/", "::1"):
        assert gone not in out, gone
    assert out.startswith("KV unavailable: NoRespondersError at <internal>")
    assert "https://<redacted>@s3.example.com/b" in out
    assert "size must be between 32 and 1024; task 'a/b' not found" in out
    body = error_response(503, "x", text, [ErrorItem(field="f", message="/tmp/x")]).text or ""
    assert "/tmp/" not in body and "127.0.0.1" not in body and "<path>" in body


def test_credentials_in_urls_never_reach_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    assert redact_credentials("nats://services:pw@h:4222") == "nats://<redacted>@h:4222"
    logger = logging.getLogger("radtrain.test.redact")
    flt = ContextFilter("test")
    logger.addFilter(flt)
    try:
        with caplog.at_level(logging.INFO, "radtrain.test.redact"):
            logger.info("connecting to %s", "nats://services:s3cr3t@10.0.0.5:4222")
    finally:
        logger.removeFilter(flt)
    assert "s3cr3t" not in caplog.text and "nats://<redacted>@10.0.0.5:4222" in caplog.text


def test_identifiers_refuse_a_trailing_newline() -> None:
    assert is_identifier("abc") and not is_identifier("abc\n") and not is_identifier("abc\r")


def test_a_budget_scope_holds_its_reservation_until_the_end() -> None:
    budget = DecodeBudget(request_bytes=100, process_bytes=100, wait_s=0)
    with budget.scope():
        with budget.reserve(60):
            pass
        assert budget.in_use == 60  # the render after the decode still counts
    assert budget.in_use == 0


def test_artifact_uris_on_the_server_become_download_routes() -> None:
    event = {"type": "radtrain.task.completed.v1", "data": {"task_id": "t1", "artifacts": [
        {"name": "model.onnx", "key": "runs/t1/model.onnx", "uri": "file:///srv/s/model.onnx"},
        {"name": "m.json", "key": "runs/t1/m.json", "uri": "s3x-presigned"}]}}
    out = json.loads(public_event(json.dumps(event).encode()))
    uris = [a["uri"] for a in out["data"]["artifacts"]]
    assert uris == ["/v1/tasks/t1/artifacts/model.onnx", "s3x-presigned"]
    assert public_event(b"not json with file:") == b"not json with file:"
    art = Artifact(name="a.pt", key="runs/t1/a.pt", uri="file:///tmp/x/a.pt", sha256="0" * 64,
                   size=1)
    now = datetime.now(UTC)
    record = TaskRecord(task_id="t1", tenant="x", name="n", state="completed", flow="general",
                        dataset_id="d", created_at=now, updated_at=now, artifacts=[art])
    assert public_record(record).artifacts[0].uri == "/v1/tasks/t1/artifacts/a.pt"
