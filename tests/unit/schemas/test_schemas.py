import json

import pytest
from pydantic import ValidationError

from schemas.events import (
    TaskCompleted,
    TaskCompletedEvent,
    TaskProgress,
    TaskProgressEvent,
    TaskRequestedEvent,
    TaskStarted,
    TaskStartedEvent,
    encode_event,
    parse_event,
)
from schemas.tasks import TaskRequest
from tests.support.factories import request


def test_requested_round_trip_keeps_every_field() -> None:
    event = TaskRequestedEvent(source="radtrain/gateway", subject="t1", data=request())
    parsed = parse_event(encode_event(event))
    assert isinstance(parsed, TaskRequestedEvent)
    assert parsed == event
    assert parsed.nats_subject == "tasks.requested.t1"
    assert parsed.msg_id == "t1:requested"


def test_discriminator_picks_the_model_by_type() -> None:
    event = TaskStartedEvent(source="r", subject="t1",
                             data=TaskStarted(task_id="t1", runner_id="r1", attempt=2))
    parsed = parse_event(encode_event(event))
    assert isinstance(parsed, TaskStartedEvent)
    assert parsed.msg_id == "t1:started:2"


def test_progress_msg_id_is_the_envelope_id() -> None:
    event = TaskProgressEvent(source="r", subject="t1", data=TaskProgress(
        task_id="t1", epoch=1, epochs=2, step=3, total_steps=10))
    assert event.msg_id == event.id != "t1:progress"


def test_unknown_event_type_is_rejected() -> None:
    raw = json.loads(encode_event(TaskCompletedEvent(source="r", subject="t1", data=TaskCompleted(
        task_id="t1", metrics={}, artifacts=[], duration_s=1.0))))
    raw["type"] = "radtrain.task.exploded.v1"
    with pytest.raises(ValidationError) as exc:
        parse_event(json.dumps(raw))
    assert "type" in str(exc.value)


def test_unknown_field_in_request_is_named() -> None:
    body = {"name": "x", "flow": "general", "task_type": "classification",
            "dataset_id": "ds1", "epochs": 3}
    with pytest.raises(ValidationError) as exc:
        TaskRequest.model_validate(body)
    assert exc.value.errors()[0]["loc"] == ("epochs",)


@pytest.mark.parametrize(("field", "value"), [
    ("learning_rate", 0), ("learning_rate", 5.0), ("batch_size", 0), ("epochs", 10_000),
    ("image_size", 8), ("optimizer", "adagrad"),
])
def test_manual_hyperparameters_out_of_bounds(field: str, value: object) -> None:
    body = {"name": "x", "flow": "general", "task_type": "classification", "dataset_id": "ds1",
            "tuning": {"mode": "manual", "hyperparameters": {field: value}}}
    with pytest.raises(ValidationError) as exc:
        TaskRequest.model_validate(body)
    assert exc.value.errors()[0]["loc"][-1] == field


def test_general_flow_needs_task_type() -> None:
    with pytest.raises(ValidationError, match="task_type is required"):
        TaskRequest.model_validate({"name": "x", "flow": "general", "dataset_id": "ds1"})


def test_ids_cannot_carry_subject_wildcards_or_paths() -> None:
    for bad in ("a.b*", "../x", "a b", ""):
        with pytest.raises(ValidationError):
            TaskRequest.model_validate({"name": "x", "flow": "general",
                                        "task_type": "classification", "dataset_id": bad})
