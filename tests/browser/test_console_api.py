"""The API the console adds, on the same embedded stack: the dry run
(``POST /v1/tasks/validate``), the hyperparameter schema and the offline weights list."""

from __future__ import annotations

from typing import Any

import pytest

from radtrain.cli.client import ApiCallError, call
from radtrain.stack import Stack

pytestmark = pytest.mark.browser


def general(dataset_id: str, **over: Any) -> dict[str, Any]:
    body = {"name": "dry", "flow": "general", "task_type": "classification",
            "dataset_id": dataset_id,
            "model": {"mode": "manual", "network": "resnet10t", "pretrained": False},
            "tuning": {"mode": "manual", "hyperparameters": {"epochs": 3, "image_size": 64}}}
    return body | over


def tasks_total(stack: Stack) -> int:
    return int(call("GET", f"{stack.gateway_url}/v1/tasks?limit=1", token=stack.api_key)[1]
               ["total"])


def test_dry_run_resolves_the_spec_and_publishes_nothing(stack: Stack,
                                                        datasets: dict[str, str]) -> None:
    before = tasks_total(stack)
    status, out, _ = call("POST", f"{stack.gateway_url}/v1/tasks/validate",
                          general(datasets["ct"]), token=stack.api_key)
    assert status == 200 and out["valid"] is True and out["errors"] == []
    spec, est = out["spec"], out["estimate"]
    assert spec["model"]["entry_id"].startswith("resnet10t") and spec["flow"] == "general"
    assert spec["hyperparameters"]["epochs"] == 3 and spec["pool"] == est["pool"]
    assert est["train_images"] + est["val_images"] == 24
    assert est["images_processed"] == 3 * 24 and est["seconds"] > 0 and est["basis"]
    assert tasks_total(stack) == before  # nothing was submitted


def test_dry_run_lists_every_rejection_reason(stack: Stack, datasets: dict[str, str]) -> None:
    body = general(datasets["boxes"], model={"mode": "manual", "network": "no-such-net"})
    _, out, _ = call("POST", f"{stack.gateway_url}/v1/tasks/validate", body, token=stack.api_key)
    assert out["valid"] is False and out["spec"] is None
    fields = {e["field"] for e in out["errors"]}
    assert {"dataset_id", "model.network"} <= fields, out["errors"]
    _, out, _ = call("POST", f"{stack.gateway_url}/v1/tasks/validate",
                     general("missing-dataset"), token=stack.api_key)
    assert [e["code"] for e in out["errors"]] == ["dataset_not_found"], out["errors"]


def test_a_bad_shape_is_a_422_naming_the_field(stack: Stack, datasets: dict[str, str]) -> None:
    body = general(datasets["ct"], tuning={"mode": "manual",
                                           "hyperparameters": {"epochs": 5000}})
    with pytest.raises(ApiCallError) as exc:
        call("POST", f"{stack.gateway_url}/v1/tasks/validate", body, token=stack.api_key)
    assert exc.value.status == 422
    assert "tuning.manual.hyperparameters.epochs" in str(exc.value.body), exc.value.body


def test_schema_and_offline_weights(stack: Stack) -> None:
    _, schema, _ = call("GET", f"{stack.gateway_url}/v1/hyperparameters", token=stack.api_key)
    epochs = schema["properties"]["epochs"]
    assert (epochs["minimum"], epochs["maximum"], epochs["default"]) == (1, 1000, 10)
    _, offline, _ = call("GET", f"{stack.gateway_url}/v1/weights/offline", token=stack.api_key)
    assert "efficientnet_lite0.wheel_in1k" in offline["items"]  # staged by the stack
