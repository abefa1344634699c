"""The specialized and retrain flows end to end: HTTP → enrich → train → artifacts.

One embedded stack (local store) for the module; the pneumothorax preset on
100 synthetic chest radiographs at 64 px (half of them MONOCHROME1), then a
retrain of that model on new data, then the rejections a retrain can meet.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from infra.settings import Settings
from infra.store import open_store
from radtrain.cli.client import ApiCallError, call
from radtrain.cli.demo import build_demo_dataset, retrain_request, specialized_request
from radtrain.servers.nats import free_port
from radtrain.stack import Stack, start_stack
from tests.e2e.test_full_flow import submit, wait_terminal

pytestmark = pytest.mark.e2e
QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("flows")
    settings = Settings(
        data_dir=data, store_dir=data / "store", cache_dir=data / "cache", work_dir=data / "work",
        gateway_port=0, nats_port=0, progress_interval_s=0.5, heartbeat_s=2.0,
        handlers_metrics_port=free_port(), runner_metrics_port=free_port())
    st = start_stack(settings)
    yield st
    st.stop()


@pytest.fixture(scope="module")
def specialized(stack: Stack) -> dict[str, Any]:
    ds_id = f"ptx-{uuid.uuid4().hex[:6]}"
    build_demo_dataset(stack.settings, ds_id, n_cases=100, seed=5, console=QUIET, kind="ptx")
    started = time.monotonic()
    rec = wait_terminal(stack, submit(stack, specialized_request(ds_id)), 240)
    return dict(rec, wall_s=time.monotonic() - started)


def artifact_text(stack: Stack, rec: dict[str, Any], name: str) -> str:
    art = next(a for a in rec["artifacts"] if a["name"] == name)
    return open_store(stack.settings).get_bytes(art["key"]).decode()


def sha_of(rec: dict[str, Any], name: str) -> str:
    return str(next(a["sha256"] for a in rec["artifacts"] if a["name"] == name))


def test_presets_are_served(stack: Stack) -> None:
    url, key = stack.gateway_url, stack.api_key
    _, page, _ = call("GET", f"{url}/v1/presets?limit=2", token=key)
    assert page["total"] == 3 and len(page["items"]) == 2
    _, one, _ = call("GET", f"{url}/v1/presets/pneumothorax", token=key)
    assert one["classes"] == ["normal", "ptx"] and one["zoo_entry"].startswith("efficientnet")
    with pytest.raises(ApiCallError) as exc:
        call("GET", f"{url}/v1/presets/knee", token=key)
    assert exc.value.status == 404


def test_specialized_run_learns_the_synthetic_signal(stack: Stack,
                                                     specialized: dict[str, Any]) -> None:
    rec = specialized
    assert rec["state"] == "completed", (rec, stack.log_tail("runner"))
    assert rec["metrics"]["auc"] >= 0.9, rec["metrics"]
    assert {"sensitivity", "specificity"} <= set(rec["metrics"])
    assert rec["duration_s"] < 60, rec["duration_s"]
    spec = json.loads(artifact_text(stack, rec, "spec.json"))
    assert spec["flow"] == "specialized" and spec["preset"] == "pneumothorax"
    assert spec["class_map"] == {"pneumothorax": "ptx"}
    assert spec["model"]["entry_id"] == "efficientnet_lite0.wheel_in1k"
    assert spec["preprocessing"]["image_size"] == spec["hyperparameters"]["image_size"] == 64
    print(f"specialized: AUC {rec['metrics']['auc']:.3f}, job {rec['duration_s']:.1f}s, "
          f"submit→completed {rec['wall_s']:.1f}s")


def test_retrain_from_a_completed_task_keeps_lineage(stack: Stack,
                                                     specialized: dict[str, Any]) -> None:
    assert specialized["state"] == "completed"
    base_id = specialized["task_id"]
    ds_id = f"ptx-new-{uuid.uuid4().hex[:6]}"
    build_demo_dataset(stack.settings, ds_id, n_cases=40, seed=6, console=QUIET, kind="ptx")
    rec = wait_terminal(stack, submit(stack, retrain_request(base_id, ds_id, epochs=2)), 180)
    assert rec["state"] == "completed", (rec, stack.log_tail("runner"))
    spec = json.loads(artifact_text(stack, rec, "spec.json"))
    base_spec = json.loads(artifact_text(stack, specialized, "spec.json"))
    weights_sha = sha_of(specialized, "model.safetensors")
    assert spec["flow"] == "retrain" and spec["preset"] == "pneumothorax"
    assert spec["lineage"] == {
        "base_task_id": base_id, "base_dataset_id": base_spec["dataset"]["dataset_id"],
        "base_dataset_sha256": base_spec["dataset"]["sha256"],
        "base_weights_sha256": weights_sha, "base_preset_ref": "pneumothorax@1"}
    base_weights = next(a for a in specialized["artifacts"] if a["name"] == "model.safetensors")
    assert spec["model"]["weights_key"] == base_weights["key"]  # what the base task recorded
    assert base_weights["key"].startswith(f"runs/{base_id}/attempts/")
    assert spec["model"]["weights_sha256"] == weights_sha  # the runner checked it on load
    assert spec["preprocessing"] == base_spec["preprocessing"]
    card = artifact_text(stack, rec, "model_card.md")
    assert f"retrained from task {base_id}" in card and "pneumothorax" in card


def test_retrain_mismatches_are_rejected_with_every_reason(
        stack: Stack, specialized: dict[str, Any]) -> None:
    ct_id = f"ct-{uuid.uuid4().hex[:6]}"
    build_demo_dataset(stack.settings, ct_id, n_cases=20, seed=7, console=QUIET)
    bad = submit(stack, retrain_request(specialized["task_id"], ct_id))
    missing = submit(stack, retrain_request("no-such-task", ct_id))
    rec = wait_terminal(stack, bad, 60)
    assert rec["state"] == "rejected"
    got = {(e["field"], e["code"]) for e in rec["errors"]}
    assert got == {("dataset_id", "modality_mismatch"), ("dataset_id", "class_mismatch"),
                   ("dataset_id", "class_missing")}, rec["errors"]
    rec = wait_terminal(stack, missing, 60)
    assert [e["code"] for e in rec["errors"]] == ["base_task_not_found"]


def test_dataset_import_job_runs_in_the_handlers_process(stack: Stack, tmp_path: Any) -> None:
    """The real `python -m handlers` consumes the import job: 202 at once, then completed."""
    from tests.support.dataset_utils import classification_folder

    tenant = stack.settings.default_tenant
    root = classification_folder(tmp_path / "src", n=8)
    store = open_store(stack.settings)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        store.put_file(f"imports/{tenant}/e2e/{path.relative_to(root).as_posix()}", path)
    url, key = stack.gateway_url, stack.api_key
    status, out, headers = call("POST", f"{url}/v1/datasets/imports", token=key,
                                body={"name": "e2e import", "format": "folder-csv",
                                      "source": "e2e"})
    assert status == 202 and out["state"] == "queued", out
    assert headers["Location"] == f"/v1/datasets/imports/{out['import_id']}"
    deadline = time.monotonic() + 120
    while True:
        _, rec, _ = call("GET", f"{url}/v1/datasets/imports/{out['import_id']}", token=key)
        if rec["state"] in ("completed", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert rec["state"] == "completed", (rec, stack.log_tail("handlers"))
    assert rec["progress"]["uploaded"] == 8 and rec["summary"]["num_cases"] == 8
    _, ds, _ = call("GET", f"{url}/v1/datasets/{rec['dataset_id']}", token=key)
    assert sorted(ds["classes"]) == ["finding", "normal"]
