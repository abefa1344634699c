"""Detection and segmentation end to end: HTTP submit -> enrich -> train -> artifacts.

Synthetic annotated CT (tests/support/synthetic_annotated.py) registered like any
dataset; manual zoo networks from scratch, 64 px, one epoch. Then the
artifact listing, the SSE stream and ``radtrain watch`` on the finished task.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handlers.datasets_import.register import register_dataset
from infra.bus.topology import connect
from infra.kv import DatasetRepo
from infra.settings import Settings
from infra.store import open_store
from radtrain.cli.client import call
from radtrain.stack import Stack, start_stack
from schemas.dataset import DatasetManifest, case_key
from tests.support.synthetic_annotated import annotated_manifest, generate_annotated_dataset

pytestmark = pytest.mark.e2e
FINAL = {"completed", "failed", "cancelled", "rejected"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("detseg")
    settings = Settings(
        data_dir=data, store_dir=data / "store", cache_dir=data / "cache", work_dir=data / "work",
        gateway_port=0, nats_port=0, nats_sync_always=False, progress_interval_s=0.5,
        heartbeat_s=2.0, log_format="text")
    st = start_stack(settings)
    yield st
    st.stop()


def register(stack: Stack, kind: str) -> str:
    ds = f"{kind}-{uuid.uuid4().hex[:6]}"
    store = open_store(stack.settings)
    with tempfile.TemporaryDirectory() as tmp:
        cases = generate_annotated_dataset(Path(tmp), 16, seed=5, kind=kind)  # type: ignore[arg-type]
        for path in Path(tmp).iterdir():
            store.put_file(case_key(ds, f"cases/{path.name}"), path)
    manifest = DatasetManifest.model_validate(
        annotated_manifest(ds, stack.settings.default_tenant, cases, kind))  # type: ignore[arg-type]

    async def put() -> None:
        nc, js = await connect(stack.settings, "detseg-register")
        try:
            await register_dataset(store, await DatasetRepo.open(js), manifest)
        finally:
            await nc.close()

    asyncio.run(put())
    return ds


def run_task(stack: Stack, task_type: str, dataset_id: str, network: str) -> dict[str, Any]:
    body = {"name": f"e2e {task_type}", "flow": "general", "task_type": task_type,
            "dataset_id": dataset_id,
            "model": {"mode": "manual", "network": network, "pretrained": False},
            "tuning": {"mode": "manual", "hyperparameters": {
                "epochs": 1, "image_size": 64, "batch_size": 4}}}
    _, accepted, _ = call("POST", f"{stack.gateway_url}/v1/tasks", body, token=stack.api_key)
    task_id = accepted["task_id"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert not stack.dead_services(), {n: stack.log_tail(n) for n in stack.dead_services()}
        _, rec, _ = call("GET", f"{stack.gateway_url}/v1/tasks/{task_id}", token=stack.api_key)
        if rec["state"] in FINAL:
            return dict(rec)
        time.sleep(0.5)
    raise AssertionError(f"{task_type} task not finished:\n{stack.log_tail('runner')}")


def listed(stack: Stack, task_id: str) -> dict[str, dict[str, Any]]:
    _, page, _ = call("GET", f"{stack.gateway_url}/v1/tasks/{task_id}/artifacts",
                      token=stack.api_key)
    assert page["total"] == len(page["items"])
    return {a["name"]: a for a in page["items"]}


EXPECTED = {"model.safetensors", "model.onnx", "metrics.json", "history.csv", "spec.json",
            "model_card.md", "loss_curve.png", "sample_predictions.png"}


def test_detection_end_to_end(stack: Stack) -> None:
    rec = run_task(stack, "detection", register(stack, "boxes"),
                   "fasterrcnn_mobilenet_v3_large_320_fpn.coco")
    assert rec["state"] == "completed", rec
    assert {"map_50", "map_50_95"} <= set(rec["metrics"])
    arts = listed(stack, rec["task_id"])
    assert EXPECTED <= set(arts)
    assert all(len(a["sha256"]) == 64 and a["url"] for a in arts.values())
    metrics = json.loads(open_store(stack.settings).get_bytes(arts["metrics.json"]["key"]))
    assert metrics["onnx"]["passed"] and metrics["label_mode"] == "boxes"


def test_segmentation_end_to_end_and_watch(stack: Stack) -> None:
    rec = run_task(stack, "segmentation", register(stack, "masks"),
                   "unet_mobilenetv3_small_100.lamb_in1k")
    assert rec["state"] == "completed", rec
    assert {"dice", "iou"} <= set(rec["metrics"])
    assert EXPECTED <= set(listed(stack, rec["task_id"]))

    req = urllib.request.Request(f"{stack.gateway_url}/v1/tasks/{rec['task_id']}/events",
                                 headers={"Authorization": f"Bearer {stack.api_key}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read().decode()
    names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert names[0] == "requested" and names[-1] == "completed" and "progress" in names

    out = subprocess.run(
        [str(Path(sys.executable).parent / "radtrain"), "watch", rec["task_id"], "--url",
         stack.gateway_url, "--api-key", stack.api_key],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "160"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "completed" in out.stdout and "dice" in out.stdout
