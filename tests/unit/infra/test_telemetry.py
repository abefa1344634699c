"""Trace context and JSON log lines (infra/telemetry), pure logic."""

from __future__ import annotations

import json
import logging

from infra.telemetry.logging import ContextFilter, JsonFormatter, log_context
from infra.telemetry.tracing import new_traceparent, parse_traceparent, trace_id_of


def test_traceparent_parse_create_child() -> None:
    tp = new_traceparent()
    parsed = parse_traceparent(str(tp))
    assert parsed == tp and trace_id_of(str(tp)) == tp.trace_id
    child = tp.child()
    assert child.trace_id == tp.trace_id and child.span_id != tp.span_id
    for bad in (None, "", "00-xyz", "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
                "ff-" + "a" * 32 + "-" + "b" * 16 + "-01"):
        assert parse_traceparent(bad) is None


def test_json_log_lines_carry_task_and_trace_ids() -> None:
    tp = new_traceparent()
    record = logging.LogRecord("radtrain.x", logging.INFO, __file__, 1, "hello %s", ("w",), None)
    with log_context(task_id="t42", traceparent=str(tp)):
        ContextFilter("handlers").filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "hello w" and line["service"] == "handlers"
    assert line["task_id"] == "t42" and line["trace_id"] == tp.trace_id
