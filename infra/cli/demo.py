"""``radtrain demo``: synthetic DICOM → registered dataset → HTTP task → trained model.

It talks to the stack only through its public surfaces (the store and KV for
registration, HTTP for the task), so it exercises what a user would.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.cli.client import call
from infra.datasets import case_key, register_dataset
from infra.jetstream import connect
from infra.kv import DatasetRepo
from infra.settings import Settings
from infra.store import open_store
from infra.synthetic import DEMO_RECIPE, generate_dicom_dataset, synthetic_manifest
from schemas.dataset import DatasetManifest, DatasetSummary

TERMINAL = {"completed", "failed", "rejected", "cancelled"}


def build_demo_dataset(settings: Settings, dataset_id: str, n_cases: int, seed: int,
                       console: Console) -> DatasetSummary:
    store = open_store(settings)
    with tempfile.TemporaryDirectory() as tmp:
        cases = generate_dicom_dataset(Path(tmp), n_cases=n_cases, seed=seed, modality="CT")
        for case in cases:
            store.put_file(case_key(dataset_id, f"cases/{case.file}"), Path(tmp) / case.file,
                           "application/dicom")
    manifest = DatasetManifest.model_validate(
        synthetic_manifest(dataset_id=dataset_id, tenant=settings.default_tenant, cases=cases))
    summary = asyncio.run(_register(settings, store, manifest))
    console.print(f"dataset [bold]{dataset_id}[/]: {n_cases} synthetic CT cases, "
                  f"classes {summary.classes}, manifest sha256 {summary.manifest_sha256[:12]}")
    return summary


async def _register(settings: Settings, store: Any, manifest: DatasetManifest) -> DatasetSummary:
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
