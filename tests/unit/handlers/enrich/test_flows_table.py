"""The flows table (handlers/catalog/flows.py) is what the resolvers enforce, field by field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from handlers.catalog.flows import UnknownFlow, get_flow, list_flows
from handlers.enrich import RESOLVERS, BaseTask, Rejected, WeightsRef, enrich
from schemas.flows import FlowRule
from tests.support.factories import dataset, request


class Weights:
    def find(self, entry_id: str) -> WeightsRef | None:
        return WeightsRef(f"zoo/weights/{entry_id}.safetensors", "a" * 64)


def codes(cmd: Any, ds: Any = "default", base: BaseTask | None = None
          ) -> set[tuple[str, str]]:
    with pytest.raises(Rejected) as exc:
        enrich(cmd, dataset() if ds == "default" else ds, Weights(), base)
    return {(e.field, e.code) for e in exc.value.errors}


VALID: dict[str, dict[str, Any]] = {
    "general": {},
    "specialized": {"task_type": None, "model": None, "preset": "pneumothorax"},
    "retrain": {"task_type": None, "model": None, "base_task_id": "t0"},
}
"""A request of each flow that the table allows (other checks may still reject it)."""
FORBIDDEN_VALUES: dict[str, Any] = {"preset": "pneumothorax", "base_task_id": "t0"}
REQUIRED_CODES = {"preset": "preset_required", "base_task_id": "base_task_required"}


def test_the_table_is_design_section_1() -> None:
    rows = {r.flow: r for r in list_flows()}
    assert list(rows) == ["general", "specialized", "retrain"]
    general, special, retrain = rows["general"], rows["specialized"], rows["retrain"]
    assert general.network == ("auto", "manual")
    assert general.tuning == ("auto_with_preferences", "manual", "search")
    assert general.annotation_from == "task_type"
    assert general.annotations_for("classification") == ("single_label", "multi_label")
    assert general.annotations_for("detection") == ("boxes",)
    assert general.annotations_for("segmentation") == ("masks",)
    assert (special.annotation_from, special.network) == ("preset", ("preset",))
    assert (retrain.annotation_from, retrain.network) == ("base_task", ("base_task",))
    for row in (special, retrain):
        assert row.tuning == ("auto_without_preferences", "manual", "search")
        assert row.model == "forbidden" and row.annotations_for("classification") == ()
    assert [(r.task_type, r.preset, r.base_task_id, r.model) for r in rows.values()] == [
        ("required", "forbidden", "forbidden", "optional"),
        ("optional", "required", "forbidden", "forbidden"),
        ("optional", "forbidden", "required", "forbidden")]
    assert special.task_types == ("classification",)  # every preset is a classifier today
    assert general.task_types == retrain.task_types == (
        "classification", "detection", "segmentation")
    assert set(RESOLVERS) == set(rows)
    with pytest.raises(UnknownFlow, match="general, specialized, retrain"):
        get_flow("federated")


@pytest.mark.parametrize("rule", list_flows(), ids=lambda r: r.flow)
def test_every_field_the_table_forbids_is_rejected(rule: FlowRule) -> None:
    forbidden = [name for name in ("preset", "base_task_id")
                 if getattr(rule, name) == "forbidden"]
    assert forbidden  # each flow forbids at least one of them
    cmd = request(flow=rule.flow, **{**VALID[rule.flow],
                                     **{name: FORBIDDEN_VALUES[name] for name in forbidden}})
    got = codes(cmd)
    assert {(name, "not_allowed") for name in forbidden} <= got  # every one listed
    manual = {"mode": "manual", "network": "resnet18"}
    auto = {"mode": "auto", "preference": {"goal": "fastest"}}
    for model, field in ((manual, "model.network"), (auto, "model.preference")):
        allowed = ("manual" if field == "model.network" else "auto") in rule.network
        got = codes(request(flow=rule.flow, **{**VALID[rule.flow], "model": model}),
                    ds=None)  # rejected anyway: dataset_not_found
        assert ((field, "not_allowed") in got) is not allowed, (rule.flow, field)


@pytest.mark.parametrize("rule", list_flows(), ids=lambda r: r.flow)
def test_every_field_the_table_requires_is_asked_for(rule: FlowRule) -> None:
    required = [name for name in ("preset", "base_task_id") if getattr(rule, name) == "required"]
    for name in required:
        got = codes(request(flow=rule.flow, **{**VALID[rule.flow], name: None}))
        assert (name, REQUIRED_CODES[name]) in got


def test_the_resolvers_read_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row that forbade manual tuning would reject it: the rule is data, not code."""
    cmd = request(tuning={"mode": "manual", "hyperparameters": {"epochs": 2}})
    assert enrich(cmd, dataset(), Weights()).hyperparameters.epochs == 2
    auto_only = get_flow("general").model_copy(update={"tuning": ("auto_with_preferences",)})
    monkeypatch.setattr("handlers.enrich.resolver.get_flow", lambda flow: auto_only)
    assert codes(cmd) == {("tuning.mode", "not_allowed")}
    assert enrich(request(), dataset(), Weights()).flow == "general"  # auto still fine


@pytest.mark.parametrize("update", [
    {"model": "forbidden"},  # but the network is chosen by the request
    {"task_type": "optional"},  # but the request decides it
    {"annotations": ()},  # but the annotation follows the task type
    {"tuning": ()},
])
def test_an_inconsistent_row_is_refused(update: dict[str, Any]) -> None:
    body = {**get_flow("general").model_dump(), **update}
    with pytest.raises(ValidationError):
        FlowRule.model_validate(body)
