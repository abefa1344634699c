"""``radtrain demo``: synthetic DICOM → registered dataset → HTTP task → trained model.

It talks to the stack only through its public surfaces (the store and KV for
registration, HTTP for the task), so it exercises what a user would.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.bus.topology import connect
from infra.kv import DatasetRepo
from infra.settings import Settings
from infra.store import open_store
from radtrain.cli.client import call
from radtrain.stack import console_url
from radtrain.synthetic.ct import DEMO_RECIPE, generate_dicom_dataset, synthetic_manifest
from radtrain.synthetic.presets import (
    PRESET_DEMO_TUNING,
    generate_pneumothorax_dataset,
    pneumothorax_manifest,
)
from schemas.dataset import DatasetManifest, DatasetSummary, case_key

TERMINAL = {"completed", "failed", "rejected", "cancelled"}
FLOWS = ("general", "specialized", "retrain")
PTX_CASES = 100


def build_demo_dataset(settings: Settings, dataset_id: str, n_cases: int, seed: int,
                       console: Console, kind: str = "CT") -> DatasetSummary:
    """Synthetic head CT (``CT``, the general flow) or chest DX pneumothorax (``ptx``)."""
    store = open_store(settings)
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "ptx":
            cases = generate_pneumothorax_dataset(Path(tmp), n_cases=n_cases, seed=seed)
        else:
            cases = generate_dicom_dataset(Path(tmp), n_cases=n_cases, seed=seed, modality="CT")
        for case in cases:
            store.put_file(case_key(dataset_id, f"cases/{case.file}"), Path(tmp) / case.file,
                           "application/dicom")
    tenant = settings.default_tenant
    manifest = DatasetManifest.model_validate(
        pneumothorax_manifest(dataset_id, tenant, cases) if kind == "ptx" else
        synthetic_manifest(dataset_id=dataset_id, tenant=tenant, cases=cases))
    summary = asyncio.run(_register(settings, store, manifest))
    console.print(f"dataset [bold]{dataset_id}[/]: {n_cases} synthetic {manifest.modality} "
                  f"cases, classes {summary.classes}, manifest sha256 "
                  f"{summary.manifest_sha256[:12]}")
    return summary


async def _register(settings: Settings, store: Any, manifest: DatasetManifest) -> DatasetSummary:
    from handlers.datasets_import.register import register_dataset

    nc, js = await connect(settings, name="radtrain-demo")
    try:
        return await register_dataset(store, await DatasetRepo.open(js), manifest)
    finally:
        await nc.close()


def demo_request(dataset_id: str) -> dict[str, Any]:
    recipe = {k: v for k, v in DEMO_RECIPE.items() if k not in ("network", "n_cases")}
    return {
        "name": "demo: synthetic hemorrhage-like finding",
        "description": "radtrain demo on synthetic head CT",
        "flow": "general",
        "task_type": "classification",
        "dataset_id": dataset_id,
        "model": {"mode": "manual", "network": DEMO_RECIPE["network"], "pretrained": False},
        "tuning": {"mode": "manual", "hyperparameters": recipe},
    }


def specialized_request(dataset_id: str, preset: str = "pneumothorax") -> dict[str, Any]:
    """Network, weights, preprocessing and recipe from the preset; only the size and
    length shrink (manual tuning) so that it runs in about a minute on a laptop CPU."""
    return {"name": f"demo: {preset} preset", "flow": "specialized", "preset": preset,
            "dataset_id": dataset_id,
            "tuning": {"mode": "manual", "hyperparameters": dict(PRESET_DEMO_TUNING)}}


def retrain_request(base_task_id: str, dataset_id: str, epochs: int = 4) -> dict[str, Any]:
    """Everything but the data and the tuning comes from the base task."""
    return {"name": f"demo: retrain of {base_task_id}", "flow": "retrain",
            "base_task_id": base_task_id, "dataset_id": dataset_id,
            "tuning": {"mode": "manual", "hyperparameters": {
                "epochs": epochs, "learning_rate": 1e-3, "warmup_epochs": 0}}}


def run_flow(flow: str, url: str, token: str | None, settings: Settings, cases: int | None,
             seed: int, console: Console) -> dict[str, Any]:
    """One flow end to end; ``retrain`` first trains the general demo task as its base."""
    def submit(body: dict[str, Any]) -> dict[str, Any]:
        _, accepted, headers = call("POST", f"{url}/v1/tasks", body, token=token)
        console.print(f"{body['flow']} task [bold]{accepted['task_id']}[/] accepted "
                      f"({headers.get('Location')})")
        record = follow(url, accepted["task_id"], console, token=token)
        print_result(record, console)
        return record

    console.print(f"web console: [bold]{console_url(url)}[/] (sign in with the API key; "
                  "`radtrain up` keeps it running)")
    tag = uuid.uuid4().hex[:8]
    if flow == "specialized":
        build_demo_dataset(settings, f"demo-ptx-{tag}", cases or PTX_CASES, seed, console, "ptx")
        return submit(specialized_request(f"demo-ptx-{tag}"))
    n = cases or int(DEMO_RECIPE["n_cases"])
    build_demo_dataset(settings, f"demo-{tag}", n, seed, console)
    record = submit(demo_request(f"demo-{tag}"))
    if flow != "retrain" or record["state"] != "completed":
        return record
    build_demo_dataset(settings, f"demo-new-{tag}", n, seed + 1, console)
    return submit(retrain_request(record["task_id"], f"demo-new-{tag}"))


def serve_console(stack: Any, console: Console, poll_s: float = 0.5) -> None:
    """After the demo, keep an embedded stack (hence its web console) up until Ctrl-C,
    so the printed console URL can be opened; returns at once if a service died."""
    console.print(f"web console: [bold]{stack.console_url}[/]  API key: {stack.api_key}\n"
                  "the stack keeps running for the console; Ctrl-C stops it")
    try:
        while not stack.dead_services():
            time.sleep(poll_s)
    except KeyboardInterrupt:
        console.print("stopping ...")


def follow(url: str, task_id: str, console: Console, timeout_s: float = 900.0,
           token: str | None = None) -> dict[str, Any]:
    """Poll the task and draw a progress bar until it reaches a terminal state."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    deadline = time.monotonic() + timeout_s
    with Progress(*columns, console=console, transient=False) as bar:
        tid = bar.add_task("requested", total=None, info="")
        while True:
            _, rec, _ = call("GET", f"{url}/v1/tasks/{task_id}", token=token)
            prog = rec.get("progress") or {}
            info = _progress_info(prog)
            bar.update(tid, description=rec["state"], info=info,
                       total=prog.get("total_steps") or None, completed=prog.get("step", 0))
            if rec["state"] in TERMINAL:
                if rec["state"] == "completed":
                    bar.update(tid, completed=prog.get("total_steps", 0))
                return dict(rec)
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} still {rec['state']} after {timeout_s:.0f}s")
            time.sleep(1.0)


def _progress_info(prog: dict[str, Any]) -> str:
    if not prog:
        return ""
    parts = [f"epoch {prog['epoch']}/{prog['epochs']}"]
    if prog.get("loss") is not None:
        parts.append(f"loss {prog['loss']:.3f}")
    if "auc" in prog.get("metrics", {}):
        parts.append(f"val AUC {prog['metrics']['auc']:.3f}")
    if prog.get("eta_s") is not None:
        parts.append(f"ETA {prog['eta_s']:.0f}s")
    return "  ".join(parts)


def print_result(rec: dict[str, Any], console: Console) -> None:
    if rec["state"] != "completed":
        console.print(f"[red]task {rec['task_id']} {rec['state']}[/]")
        for err in rec.get("errors", []):
            console.print(f"  - {err['field']}: [{err['code']}] {err['message']}")
        return
    console.print(f"task {rec['task_id']} completed in {rec.get('duration_s', 0):.0f}s")
    table = Table(title="held-out validation metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in sorted(rec["metrics"].items()):
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print("artifacts:")
    for art in rec["artifacts"]:
        console.print(f"  {art['name']:<20} {art['uri']}  sha256 {art['sha256'][:12]}")
