"""model_card.md: what a reader of the model needs before trusting it.

Data (with the manifest's sha256, so the exact snapshot can be found),
preset and lineage, the network and its weights, the recipe, the held-out
metrics, the ONNX check, intended use and the limits that always apply.
"""

from __future__ import annotations

from typing import Any

from runner.onnx_export import OnnxReport
from runner.train import TrainResult
from schemas.spec import TrainingSpec

TASK_WORDS = {"single_label": "single-label classification",
              "multi_label": "multi-label classification",
              "boxes": "object detection (boxes)", "masks": "semantic segmentation (masks)"}

LIMITS = """\
- Trained and validated on one dataset snapshot only; performance on other
  scanners, protocols, sites or populations is unknown until measured there.
- Validation metrics come from a patient-level hold-out split of the same
  dataset ({n_val} cases); small validation sets give wide uncertainty.
- Not a medical device. Outputs must not drive clinical decisions without
  a prospective, site-specific evaluation and the applicable regulatory review.
- Inputs must be preprocessed exactly as listed below (windows, size,
  normalisation); other preprocessing silently degrades results."""


def _table(rows: list[tuple[str, str]]) -> str:
    body = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"| | |\n| --- | --- |\n{body}"


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def metrics_section(metrics: dict[str, float], report: dict[str, Any]) -> str:
    """Every metric with its 95 % interval where there is one; undefined ones with why."""
    intervals, undefined = report.get("intervals", {}), report.get("undefined", {})
    rows = []
    for name in sorted({*metrics, *intervals, *undefined}):
        if name in undefined:
            rows.append(f"| {name} | undefined | {undefined[name]} |")
            continue
        ci = intervals.get(name)
        value = ci["estimate"] if ci else metrics.get(name)  # the interval's own estimate
        band = (f"{_num(ci['low'])} - {_num(ci['high'])} ({ci['resamples']} resamples)"
                if ci and ci["low"] is not None else "")
        rows.append(f"| {name} | {_num(value)} | {band} |")
    boot = report.get("bootstrap")
    how = ""
    if boot:
        how = (f"\n\n95 % intervals: {boot['method']} over {boot['unit']}s "
               f"({boot['clusters']} {boot['unit']}s, {boot['cases']} cases, "
               f"{boot['resamples']} resamples, seed {boot['seed']}). Metrics of the best "
               "epoch; an interval is of the final model on the same validation cases.")
    return ("## Validation metrics (best epoch)\n| metric | value | 95 % CI |\n"
            "| --- | --- | --- |\n" + "\n".join(rows) + how)


def operating_section(report: dict[str, Any]) -> str:
    points = report.get("operating_points", {})
    if not points:
        return ""
    lines = []
    for name, p in points.items():
        rule = ("Youden's J (max sensitivity + specificity)" if p["rule"] == "youden"
                else f"target sensitivity {p['target_sensitivity']:g}")
        lines.append(f"| {name} | {p['threshold']:.4f} | {rule} | {p['sensitivity']:.3f} | "
                     f"{p['specificity']:.3f} |")
    ece = report.get("calibration", {})
    cal = ("\n\nCalibration (expected calibration error, 10 bins; plots/calibration.png): "
           + ", ".join(f"{k.removeprefix('ece_')} {v:.3f}" for k, v in ece.items())) if ece else ""
    return ("## Operating point\nChosen on the validation split; sensitivity and specificity "
            "are measured on the same cases, so they are optimistic until checked on new "
            "data.\n\n| class | threshold | rule | sensitivity | specificity |\n"
            "| --- | --- | --- | --- | --- |\n" + "\n".join(lines) + cal)


def software_section(spec: TrainingSpec) -> str:
    if not spec.software:
        return ""
    return "## Software\n" + _table(sorted(spec.software.items()))


def render(spec: TrainingSpec, result: TrainResult, onnx: OnnxReport | None,
           n_val: int, report: dict[str, Any] | None = None) -> str:
    ds, m, hp, prep = spec.dataset, spec.model, spec.hyperparameters, spec.preprocessing
    report = report or {}
    windows = ", ".join(f"{w.name} (C {w.center:g}, W {w.width:g})" for w in prep.windows)
    if onnx is None:
        onnx_line = "not exported"
    elif onnx.passed and onnx.max_abs_diff is not None:
        onnx_line = (f"exported (opset {onnx.opset}) and checked with onnxruntime: max |diff| "
                     f"{onnx.max_abs_diff:.2e} (atol {onnx.atol:g}, rtol {onnx.rtol:g})")
    else:
        onnx_line = f"not published: {onnx.message}"
    lineage = "none (trained from the weights listed above)"
    if spec.lineage is not None:
        lin = spec.lineage
        lineage = (f"retrained from task {lin.base_task_id} (dataset {lin.base_dataset_id}, "
                   f"weights sha256 {lin.base_weights_sha256[:16]}..."
                   + (f", preset {lin.base_preset_ref})" if lin.base_preset_ref else ")"))
    resumed = ("" if result.resumed_from_epoch is None
               else f"; resumed from a checkpoint after epoch {result.resumed_from_epoch}")
    sections = [
        f"# Model card: {spec.name}",
        spec.description or "",
        "## Model\n" + _table([
            ("task", TASK_WORDS.get(spec.label_mode, spec.label_mode)),
            ("classes", ", ".join(spec.classes)),
            ("network", f"{m.network} ({m.builder}, zoo entry {m.entry_id})"),
            ("initial weights", f"{m.weights_key} (sha256 {m.weights_sha256})"
             if m.weights_key else ("pretrained" if m.pretrained else "random initialisation")),
            ("preset", spec.preset_ref or spec.preset or "none"),
            ("lineage", lineage),
            ("task id", spec.task_id)]),
        "## Data\n" + _table([
            ("dataset", f"{ds.dataset_id} ({ds.num_cases} cases, {ds.modality}, "
                        f"{ds.annotation_type})"),
            ("manifest", f"{ds.manifest_key} (sha256 {ds.sha256})"),
            ("validation cases", str(n_val))]),
        "## Preprocessing\n" + _table([
            ("size", f"{prep.image_size} x {prep.image_size}, {prep.channels} channels"),
            ("windows", windows or "none (the image's own range)"),
            ("normalisation", f"mean {list(prep.mean)}, std {list(prep.std)}")]),
        "## Training\n" + _table([
            ("recipe", f"{hp.optimizer}, lr {hp.learning_rate:g} ({hp.schedule}, "
                       f"{hp.warmup_epochs} warm-up epochs), batch {hp.batch_size}, "
                       f"weight decay {hp.weight_decay:g}, {hp.augmentation} augmentation"),
            ("epochs", f"{len(result.history)} run of {hp.epochs} planned; best epoch "
                       f"{result.best_epoch}{resumed}"),
            ("seed", str(hp.seed)),
            ("duration", f"{result.seconds:.0f} s")]),
        metrics_section(result.metrics, report),
        operating_section(report),
        f"## ONNX\n{onnx_line}",
        "## Intended use\nResearch and development: triage prototypes, dataset audits and "
        "comparison of recipes on the data named above.",
        "## Limits\n" + LIMITS.format(n_val=n_val),
        software_section(spec),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"
