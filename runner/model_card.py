"""model_card.md: what a reader of the model needs before trusting it.

Data (with the manifest's sha256, so the exact snapshot can be found),
preset and lineage, the network and its weights, the recipe, the held-out
metrics, the ONNX check, intended use and the limits that always apply.
"""

from __future__ import annotations

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


def render(spec: TrainingSpec, result: TrainResult, onnx: OnnxReport | None,
           n_val: int) -> str:
    ds, m, hp, prep = spec.dataset, spec.model, spec.hyperparameters, spec.preprocessing
    windows = ", ".join(f"{w.name} (C {w.center:g}, W {w.width:g})" for w in prep.windows)
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(result.metrics.items()))
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
                   f"weights sha256 {lin.base_weights_sha256[:16]}...)")
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
            ("preset", spec.preset or "none"),
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
        f"## Validation metrics (best epoch)\n| metric | value |\n| --- | --- |\n{metrics}",
        f"## ONNX\n{onnx_line}",
        "## Intended use\nResearch and development: triage prototypes, dataset audits and "
        "comparison of recipes on the data named above.",
        "## Limits\n" + LIMITS.format(n_val=n_val),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"
