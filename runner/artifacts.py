"""Upload what a finished run leaves behind (DESIGN.md §5 layout, §8 artifacts).

Every file is written locally first and then put into the store, whose
writes are atomic; the returned ``Artifact`` carries the sha256 the store
computed over the bytes it actually stored, which is what goes into
``task.completed``. Artifact names are plain file names (plots keep their
``plots/`` folder in the key), so each is one path segment in the API.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from safetensors.torch import save_file

from infra.store import ObjectInfo, ObjectStore
from runner import plots
from runner.model_card import render
from runner.onnx_export import OnnxReport, export_onnx
from runner.report import evaluation_report, reported_metrics, resamples_for, software_versions
from runner.train import TrainResult
from schemas.events import Artifact
from schemas.spec import TrainingSpec

log = logging.getLogger("radtrain.runner.artifacts")
LEADING = ("epoch", "train_loss", "val_loss", "accuracy", "auc", "map_50", "map_50_95",
           "dice", "iou")
TRAILING = ("lr", "seconds")
CONTENT_TYPES = {".safetensors": "application/octet-stream", ".onnx": "application/octet-stream",
                 ".json": "application/json", ".csv": "text/csv", ".png": "image/png",
                 ".md": "text/markdown"}


def run_prefix(task_id: str, attempt: int) -> str:
    """Each attempt writes only under its own prefix: a stale attempt's uploads can never
    replace the files of the attempt that completed the task (runner/worker.py)."""
    return f"runs/{task_id}/attempts/{attempt}/"


def run_key(task_id: str, attempt: int, name: str) -> str:
    return f"{run_prefix(task_id, attempt)}{name}"


def write_artifacts(
    store: ObjectStore, spec: TrainingSpec, result: TrainResult, work_dir: Path, attempt: int,
    *, resamples: int | None = None,
) -> list[Artifact]:
    """Weights, ONNX, metrics, history, plots, model card and spec under
    ``runs/<task_id>/attempts/<attempt>/``. ``resamples``: the runner's setting for the
    bootstrap intervals (the spec's ``evaluation`` wins)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec = spec.model_copy(update={"software": software_versions()})
    onnx = _write_onnx(spec, result, work_dir)
    report = evaluation_report(spec, result.evaluation, resamples_for(spec, resamples))
    files: dict[str, Path] = {
        "model.safetensors": _write_weights(result, work_dir),
        "metrics.json": _write_metrics(spec, result, onnx, work_dir, report),
        "history.csv": _write_history(result, work_dir),
        "spec.json": _write_text(work_dir / "spec.json", spec.model_dump_json(indent=2)),
    }
    if onnx is not None and onnx.passed:
        files["model.onnx"] = work_dir / "model.onnx"
    plot_keys = {name: f"plots/{name}" for name in _write_plots(spec, result, work_dir)}
    n_val = len(result.evaluation.preds) if result.evaluation is not None else 0
    files["model_card.md"] = _write_text(work_dir / "model_card.md",
                                         render(spec, result, onnx, n_val, report))
    prefix = run_prefix(spec.task_id, attempt)
    artifacts = []
    for name, path in files.items():
        artifacts.append(_put(store, prefix, name, name, path))
    for name, rel in plot_keys.items():
        artifacts.append(_put(store, prefix, name, rel, work_dir / "plots" / name))
    return artifacts


def _put(store: ObjectStore, prefix: str, name: str, rel: str, path: Path) -> Artifact:
    info = store.put_file(f"{prefix}{rel}", path,
                          content_type=CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
    return _artifact(name, info)


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


def _write_onnx(spec: TrainingSpec, result: TrainResult, work_dir: Path) -> OnnxReport | None:
    """Export and check; a failure is reported (metrics.json, model card), not fatal:
    the safetensors weights are the primary artifact and stay valid."""
    if result.example is None:
        return None
    try:
        report = export_onnx(result.model, result.example, work_dir / "model.onnx",
                             spec.label_mode)
    except Exception as exc:
        log.warning("task %s: ONNX export failed: %r", spec.task_id, exc)
        return OnnxReport(False, None, 0.0, 0.0, 0, [], f"export failed: {exc!r}"[:500])
    if not report.passed:
        log.warning("task %s: ONNX parity check failed: %s", spec.task_id, report.message)
    return report


def _write_plots(spec: TrainingSpec, result: TrainResult, work_dir: Path) -> list[str]:
    out = work_dir / "plots"
    out.mkdir(exist_ok=True)
    made = [plots.loss_curve(result.history, out / "loss_curve.png"),
            plots.metric_curve(result.history, out / "metric_curve.png")]
    ev, strategy = result.evaluation, result.strategy
    if ev is not None and spec.label_mode in ("single_label", "multi_label"):
        made.append(plots.roc(ev, spec.classes, spec.label_mode, out / "roc.png"))
        made.append(plots.confusion(ev, spec.classes, spec.label_mode,
                                    out / "confusion_matrix.png"))
        made.append(plots.calibration(ev, spec.classes, spec.label_mode,
                                      out / "calibration.png"))
    if ev is not None and strategy is not None and result.samples is not None:
        made.append(plots.samples(strategy, result.samples, ev, out / "sample_predictions.png"))
    return [p.name for p in made if p is not None]


def _write_metrics(spec: TrainingSpec, result: TrainResult, onnx: OnnxReport | None,
                   work_dir: Path, report: dict[str, object]) -> Path:
    body = {
        "task_id": spec.task_id,
        "classes": spec.classes,
        "label_mode": spec.label_mode,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "resumed_from_epoch": result.resumed_from_epoch,
        "train_seconds": round(result.seconds, 3),
        "metrics": reported_metrics(result.metrics, report),
        "onnx": onnx.as_dict() if onnx is not None else None,
        "preset": spec.preset_ref or spec.preset,
        **{k: report.get(k, {}) for k in ("intervals", "operating_points", "undefined",
                                          "bootstrap", "calibration")},
        **({"report_error": report["report_error"]} if "report_error" in report else {}),
    }
    return _write_text(work_dir / "metrics.json",
                       json.dumps(body, indent=2, sort_keys=True, default=str))


def _write_history(result: TrainResult, work_dir: Path) -> Path:
    """Fixed leading columns (those present), per-class metrics, then lr and seconds."""
    present = {k for row in result.history for k in row}
    lead = [c for c in LEADING if c in present or c in ("epoch", "train_loss")]
    extra = sorted(present - set(lead) - set(TRAILING))
    path = work_dir / "history.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*lead, *extra, *TRAILING], restval="")
        writer.writeheader()
        for row in result.history:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return path


def _cell(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
