"""Upload what a finished run leaves behind (DESIGN.md §5 layout, §8 artifacts).

Every file is written locally first and then put into the store, whose
writes are atomic; the returned ``Artifact`` carries the sha256 the store
computed over the bytes it actually stored, which is what goes into
``task.completed``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from safetensors.torch import save_file

from infra.store import ObjectInfo, ObjectStore
from runner.train import TrainResult
from schemas.events import Artifact
from schemas.spec import TrainingSpec

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "accuracy", "auc", "lr", "seconds")


def run_key(task_id: str, name: str) -> str:
    return f"runs/{task_id}/{name}"


def write_artifacts(
    store: ObjectStore, spec: TrainingSpec, result: TrainResult, work_dir: Path
) -> list[Artifact]:
    """model.safetensors, metrics.json, history.csv and spec.json under runs/<task_id>/."""
    work_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "model.safetensors": (_write_weights(result, work_dir), "application/octet-stream"),
        "metrics.json": (_write_metrics(spec, result, work_dir), "application/json"),
        "history.csv": (_write_history(result, work_dir), "text/csv"),
        "spec.json": (
            _write_text(work_dir / "spec.json", spec.model_dump_json(indent=2)),
            "application/json",
        ),
    }
    artifacts = []
    for name, (path, content_type) in files.items():
        info = store.put_file(run_key(spec.task_id, name), path, content_type=content_type)
        artifacts.append(_artifact(name, info))
    return artifacts


def _artifact(name: str, info: ObjectInfo) -> Artifact:
    return Artifact(name=name, key=info.key, uri=info.uri, sha256=info.sha256, size=info.size)


def _write_weights(result: TrainResult, work_dir: Path) -> Path:
    """safetensors wants contiguous CPU tensors that share no storage: clone each."""
    state = {
        k: v.detach().to("cpu").contiguous().clone() for k, v in result.model.state_dict().items()
    }
    path = work_dir / "model.safetensors"
    save_file(state, str(path), metadata={"format": "pt", "best_epoch": str(result.best_epoch)})
    return path


def _write_metrics(spec: TrainingSpec, result: TrainResult, work_dir: Path) -> Path:
    body = {
        "task_id": spec.task_id,
        "classes": spec.classes,
        "label_mode": spec.label_mode,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_seconds": round(result.seconds, 3),
        "metrics": result.metrics,
    }
    return _write_text(work_dir / "metrics.json", json.dumps(body, indent=2, sort_keys=True))


def _write_history(result: TrainResult, work_dir: Path) -> Path:
    """Fixed leading columns, then any per-class metrics in a stable order."""
    extra = sorted({k for row in result.history for k in row} - set(HISTORY_COLUMNS))
    path = work_dir / "history.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*HISTORY_COLUMNS, *extra], restval="")
        writer.writeheader()
        for row in result.history:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return path


def _cell(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
