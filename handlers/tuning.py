"""Tuning: the complete, bounded hyperparameter set a task trains with (DESIGN.md §7).

``auto`` derives every field from the dataset size, the preference, the
preset and the zoo entry; ``manual`` takes what the request set (its bounds
and unknown names are already 422s at the gateway, ``ManualTuningParams``)
and fills the rest. Either way ``check`` then rejects combinations that are
each in bounds but wrong together or for this network, naming the field.
Pure functions: no I/O, deterministic for the same input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handlers.catalog.select import train_size
from handlers.catalog.zoo import ZooEntry
from schemas.common import ErrorDetail
from schemas.tasks import DataType, Hyperparameters, ManualTuningParams, Preference

TRANSFORMER_FAMILIES = frozenset({"vit", "deit", "swin", "maxvit"})
HP_FIELD = "tuning.hyperparameters"


def _epochs(n: int, goal: str) -> int:
    base = 30 if n < 300 else 15 if n < 3000 else 8
    scale = {"fastest": 0.5, "balanced": 1.0, "most_accurate": 1.5}[goal]
    return max(5, round(base * scale))


def _batch_size(entry: ZooEntry, n: int, size: int, target: str, task: str) -> int:
    """Fits memory (scaled by pixels and model size) and leaves several steps per epoch."""
    if task == "detection":
        return 4 if target == "gpu" else 2
    base = 32 if target == "gpu" else 16
    if task == "segmentation":
        base //= 2
    memory = base * (224.0 / size) ** 2 * min(1.0, 30.0 / max(entry.params_m, 1.0))
    batch = max(2, min(base, int(memory), max(2, n // 8)))
    return 1 << (batch.bit_length() - 1)  # a power of two at most that


def auto_hyperparameters(*, entry: ZooEntry, num_cases: int, label_mode: str,
                         pretrained: bool, preference: Preference | None = None,
                         data: DataType | None = None,
                         preset: Mapping[str, Any] | None = None) -> tuple[Hyperparameters, str]:
    """The whole recipe, with a reason a person can check against their data.

    ~100 cases (what a preset promises to work with): fewer, gentler steps on a
    pretrained network (lower learning rate, a frozen-backbone warm start) and
    strong augmentation; large sets train shorter and lighter-augmented. A
    preset's recipe fields win over all of this.
    """
    pref = preference or Preference()
    task = {"boxes": "detection", "masks": "segmentation"}.get(label_mode, "classification")
    n = num_cases
    transformer = entry.family in TRANSFORMER_FAMILIES
    size = train_size(entry, data, pref.target)
    epochs = _epochs(n, pref.goal)
    if pretrained:
        lr = 1e-4 if n <= 300 or task == "detection" else 3e-4
    else:
        lr = 1e-3
    if transformer:
        lr *= 0.5
    values: dict[str, Any] = {
        "optimizer": "adamw",
        "learning_rate": lr,
        "schedule": "cosine",
        "warmup_epochs": min(epochs // 5, 3 if transformer else 1) if epochs >= 10 else 0,
        "batch_size": _batch_size(entry, n, size, pref.target, task),
        "epochs": epochs,
        "weight_decay": 0.05 if transformer or entry.family == "convnext" else 0.01,
        "image_size": size,
        "augmentation": "strong" if n <= 500 else "light",
        "loss": "bce" if label_mode == "multi_label" else "cross_entropy",
        "class_weighting": "none" if task == "detection" else "balanced",
        "early_stopping_patience": max(3, epochs // 5),
        "freeze_backbone_epochs": 2 if pretrained and n <= 300 and task != "detection" else 0,
        "mixed_precision": pref.target == "gpu",
        "grad_clip_norm": 1.0,
        "seed": 0,
    }
    overridden = sorted(set(preset or {}) & set(values))
    values.update(preset or {})
    hp = Hyperparameters(**values)
    reason = (f"auto: {n} cases, {pref.goal} on {pref.target}, "
              f"{'fine-tuning' if pretrained else 'from scratch'} {entry.id} -> "
              f"{hp.epochs} epochs, lr {hp.learning_rate:g} ({hp.optimizer}, {hp.schedule}, "
              f"{hp.warmup_epochs} warm-up), batch {hp.batch_size}, {hp.image_size} px, "
              f"{hp.augmentation} augmentation, {hp.loss}, early stopping after "
              f"{hp.early_stopping_patience} flat epochs"
              + (f", backbone frozen for {hp.freeze_backbone_epochs}"
                 if hp.freeze_backbone_epochs else "")
              + (f"; preset sets {', '.join(overridden)}" if overridden else ""))
    return hp, reason


def manual_hyperparameters(params: ManualTuningParams, entry: ZooEntry, label_mode: str
                           ) -> tuple[Hyperparameters, str]:
    """What the request set; the rest are the documented defaults, except two that
    depend on the task: ``image_size`` (the network's input size) and ``loss``
    (``bce`` for multi-label)."""
    given = params.model_dump(exclude_none=True)
    loss = "bce" if label_mode == "multi_label" else "cross_entropy"
    values = {"image_size": entry.input_size, "loss": loss, **given}
    hp = Hyperparameters(**values)
    unset = sorted(set(Hyperparameters.model_fields) - set(given))
    return hp, (f"manual: {', '.join(sorted(given)) or 'nothing'} set; "
                f"defaults for {', '.join(unset) or 'nothing'}")


def check(hp: Hyperparameters, entry: ZooEntry, label_mode: str) -> list[ErrorDetail]:
    """Fields that are each in bounds but wrong together, or for this network or labels."""
    errors: list[ErrorDetail] = []

    def err(field: str, message: str) -> None:
        errors.append(ErrorDetail(field=f"{HP_FIELD}.{field}", code="out_of_bounds",
                                  message=message))

    if hp.warmup_epochs >= hp.epochs and hp.warmup_epochs > 0:
        err("warmup_epochs", f"warmup_epochs ({hp.warmup_epochs}) must be below epochs "
                             f"({hp.epochs})")
    if hp.freeze_backbone_epochs >= hp.epochs and hp.freeze_backbone_epochs > 0:
        err("freeze_backbone_epochs", f"freeze_backbone_epochs ({hp.freeze_backbone_epochs}) "
                                      f"must be below epochs ({hp.epochs})")
    if entry.fixed_input_size and hp.image_size != entry.input_size:
        err("image_size", f"{entry.id} takes exactly {entry.input_size} px input, "
                          f"not {hp.image_size}")
    if entry.builder == "timm_unet" and hp.image_size % 32:
        err("image_size", f"a U-Net needs image_size divisible by 32, not {hp.image_size}")
    if label_mode == "multi_label" and hp.loss != "bce":
        err("loss", "multi-label classes are independent: use loss 'bce'")
    if label_mode == "masks" and hp.loss != "cross_entropy":
        err("loss", "segmentation trains per-pixel classes: use loss 'cross_entropy'")
    if hp.optimizer == "sgd" and hp.learning_rate > 0.5:
        err("learning_rate", f"learning_rate {hp.learning_rate:g} diverges with sgd; "
                             "use at most 0.5")
    if hp.optimizer == "adamw" and hp.learning_rate > 0.01:
        err("learning_rate", f"learning_rate {hp.learning_rate:g} diverges with adamw; "
                             "use at most 0.01")
    return errors
