"""Auto-select: rank zoo entries for a data type and a preference, each with its reason.

Pure and deterministic: the same input gives the same ranking, byte for byte
(ties break on the entry id), so a replayed ``task.requested`` picks the same
network against the same catalog.

The score is a weighted sum of three parts in [0, 1], weighted by the goal:

- speed: the entry's throughput relative to ResNet-50 at 224 px on the same
  target, from its multiply-accumulates at the training resolution and a
  per-family efficiency factor for the target (depthwise convolutions and
  attention run far below their FLOP count on GPUs, CPUs and edge chips
  respectively). Log-scaled: 0.01× → 0, 1× → 0.5, 100× → 1.
- quality: published task metrics where the weights have them (COCO box mAP,
  VOC mIoU); otherwise a capacity prior from compute, pretraining data
  (ImageNet-21k/12k fine-tunes rank higher), family generation and, for
  medical modalities, a small preference for U-Nets in segmentation; a
  detector or segmenter with only an ImageNet backbone ranks below those with
  task weights. It is a prior, not a measured accuracy on the user's data.
- fit: whether the model suits the data: a network much larger than the
  case count supports (about 8 M parameters for 100 cases, growing with the
  cube root of the count) is penalised, transformers more so below 1,000
  cases (they lack the convolutional prior), and so is a fixed-input network
  that would discard most of the pixels of much larger images.

Targets also filter: ``edge`` keeps entries of at most 25 M parameters that
run at least at ResNet-50 speed, ``cpu`` at most 100 M parameters (falling
back to everything if that leaves nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from handlers.catalog.zoo import ZooEntry, list_entries
from schemas.tasks import DataType, Preference

REFERENCE_GMACS = 4.1  # ResNet-50 at 224 px
GOAL_WEIGHTS: dict[str, tuple[float, float, float]] = {
    # speed, quality, fit
    "fastest": (0.6, 0.2, 0.2),
    "balanced": (0.35, 0.35, 0.3),
    "most_accurate": (0.1, 0.6, 0.3),
}
MAX_TRAIN_SIZE = {"gpu": 512, "cpu": 320, "edge": 256}
TRANSFORMERS = frozenset({"vit", "deit", "swin", "maxvit"})
MODERN = frozenset({"convnext", "efficientnetv2", "maxvit", "swin", "regnet"})
DATED = frozenset({"densenet", "vgg"})
MEDICAL = frozenset({"CT", "CR", "DX", "MR"})

# Throughput per MAC relative to a ResNet on the same target (rough, documented priors).
EFFICIENCY: dict[str, dict[str, float]] = {
    "gpu": {"resnet": 1.0, "resnext": 0.8, "densenet": 0.6, "efficientnet": 0.45,
            "efficientnetv2": 0.7, "regnet": 0.8, "mobilenetv3": 0.35, "convnext": 0.9,
            "vit": 1.2, "deit": 1.2, "swin": 0.8, "maxvit": 0.5, "vgg": 1.1},
    "cpu": {"resnet": 1.0, "resnext": 0.8, "densenet": 0.7, "efficientnet": 0.8,
            "efficientnetv2": 0.8, "regnet": 0.9, "mobilenetv3": 0.9, "convnext": 0.8,
            "vit": 0.9, "deit": 0.9, "swin": 0.6, "maxvit": 0.4, "vgg": 0.9},
    "edge": {"resnet": 1.0, "resnext": 0.7, "densenet": 0.6, "efficientnet": 1.0,
             "efficientnetv2": 0.8, "regnet": 0.8, "mobilenetv3": 1.2, "convnext": 0.6,
             "vit": 0.5, "deit": 0.5, "swin": 0.4, "maxvit": 0.3, "vgg": 0.7},
}


@dataclass(frozen=True)
class Cost:
    params_m: float
    gmacs: float
    """At the resolution the task would train at."""
    train_size: int
    relative_speed: float
    """Throughput relative to ResNet-50 at 224 px on the same target."""


@dataclass(frozen=True)
class Ranked:
    entry: ZooEntry
    score: float
    reason: str
    cost: Cost


def train_size(entry: ZooEntry, data: DataType | None, target: str) -> int:
    """The resolution a task trains at: the network's own if fixed (or for a detector,
    which resizes internally, or with no data type); else the data's, capped per target."""
    if data is None or entry.fixed_input_size or "detection" in entry.task_types:
        return entry.input_size
    size = min(data.image_size, MAX_TRAIN_SIZE[target])
    return max(32, round(size / 32) * 32)


def cost_of(entry: ZooEntry, data: DataType, target: str) -> Cost:
    size = train_size(entry, data, target)
    gmacs = entry.gmacs * (size / entry.input_size) ** 2
    eff = EFFICIENCY[target].get(entry.family, 0.8)
    rel = eff * REFERENCE_GMACS / max(gmacs, 1e-3)
    return Cost(entry.params_m, round(gmacs, 3), size, round(rel, 3))


def speed_score(cost: Cost) -> float:
    return _clamp((math.log10(cost.relative_speed) + 2.0) / 4.0)


def quality_score(entry: ZooEntry, data: DataType) -> tuple[float, str]:
    """Published task metric where there is one, else a capacity prior; with its wording."""
    for key, scale in (("box_map", 50.0), ("miou", 75.0)):
        metric = next((v for k, v in entry.benchmark.items() if k.endswith(key)), None)
        if metric is not None:
            return _clamp(metric / scale), f"{key} {metric:g} published"
    capacity = _clamp((math.log10(max(entry.gmacs, 1e-3)) + 2.0) / 3.5)
    if entry.weights_scope == "backbone":  # a detector/segmenter whose head starts from zero
        return 0.1 + 0.4 * capacity, f"capacity {entry.gmacs:g} GMACs, backbone-only pretraining"
    bonus, notes = 0.0, []
    if "21k" in entry.pretrained_on or "12k" in entry.pretrained_on:
        bonus += 0.1
        notes.append(entry.pretrained_on.split(",")[0] + " pretraining")
    if entry.family in MODERN:
        bonus += 0.05
    elif entry.family in DATED:
        bonus -= 0.05
    if entry.builder == "timm_unet" and data.modality in MEDICAL:
        bonus += 0.05
        notes.append(f"U-Net, the usual choice for {data.modality} masks")
    note = f"capacity {entry.gmacs:g} GMACs" + "".join(f", {n}" for n in notes)
    return _clamp(capacity * 0.8 + 0.2 + bonus), note


def ideal_params_m(num_cases: int) -> float:
    return 8.0 * (num_cases / 100.0) ** (1.0 / 3.0)


def fit_score(entry: ZooEntry, data: DataType) -> tuple[float, str]:
    ideal = ideal_params_m(data.num_cases)
    excess = max(0.0, math.log2(entry.params_m / ideal))
    fit = 1.0 / (1.0 + 0.35 * excess)
    notes = [f"{entry.params_m:g}M params for {data.num_cases} cases (~{ideal:.0f}M suits)"]
    if entry.family in TRANSFORMERS and data.num_cases < 1000:
        fit *= 0.6
        notes.append("transformer with few cases")
    if entry.fixed_input_size and data.image_size > 2 * entry.input_size:
        fit *= 0.85
        notes.append(f"fixed {entry.input_size} px input for {data.image_size} px images")
    return _clamp(fit), "; ".join(notes)


def _allowed(entry: ZooEntry, cost: Cost, target: str) -> bool:
    if target == "edge":
        return entry.params_m <= 25 and cost.relative_speed >= 1.0
    if target == "cpu":
        return entry.params_m <= 100
    return True


def rank(task_type: str, data: DataType, preference: Preference, *, limit: int | None = 10,
         one_per_network: bool = True) -> list[Ranked]:
    """Best first. ``one_per_network`` keeps the best weights of each network (a shorter,
    more useful list); ``limit=None`` returns everything."""
    w_speed, w_quality, w_fit = GOAL_WEIGHTS[preference.goal]
    candidates = list_entries(task_type)
    scored: list[Ranked] = []
    for entry in candidates:
        cost = cost_of(entry, data, preference.target)
        q, q_note = quality_score(entry, data)
        f, f_note = fit_score(entry, data)
        s = speed_score(cost)
        score = round(w_speed * s + w_quality * q + w_fit * f, 4)
        reason = (f"{preference.goal} on {preference.target}: speed {s:.2f} "
                  f"({cost.relative_speed:g}x ResNet-50@224 at {cost.train_size} px), "
                  f"quality {q:.2f} ({q_note}), fit {f:.2f} ({f_note})")
        scored.append(Ranked(entry, score, reason, cost))
    allowed = [r for r in scored if _allowed(r.entry, r.cost, preference.target)]
    ranked = sorted(allowed or scored, key=lambda r: (-r.score, r.entry.id))
    if one_per_network:
        seen: set[tuple[str, str]] = set()
        unique = []
        for r in ranked:
            key = (r.entry.builder, r.entry.network)
            if key not in seen:
                seen.add(key)
                unique.append(r)
        ranked = unique
    return ranked if limit is None else ranked[:limit]


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))
