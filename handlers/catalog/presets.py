"""Presets of the specialized flow (DESIGN.md §1): frozen data, one typed lookup.

A preset is a promise that about 100 good cases give a useful model, so it
pins everything a user could get wrong: task type and label mode, the classes
and how common dataset label names map onto them, the modality, the
preprocessing (CT windows, size), the zoo entry (and so the weights), the
training recipe and the metrics to report. The data live in ``presets.json``
beside this file (reviewable in git, identical on every machine); this module
only gives them a shape and a lookup. No torch: the gateway lists presets.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.api import Page
from schemas.dataset import AnnotationType
from schemas.spec import Window
from schemas.tasks import ManualTuningParams, Modality, SliceContext, TaskType

__all__ = ["Minimums", "Preset", "PresetPage", "UnknownPreset", "get_preset", "list_presets",
           "map_label"]

REPORTABLE = frozenset({"auc", "auc_per_class", "auc_any", "weighted_log_loss",
                        "sensitivity", "specificity", "accuracy",
                        "pe_weighted_log_loss", "pe_exam_auc"})  # these two: runner/pe_metrics
"""Metric names a preset may list; the runner computes each of them (runner/metrics.py)."""


class Minimums(BaseModel):
    """How much data the preset's promise needs (issue 15 item 6).

    Below ``cases`` or ``positives_per_class`` the specialized flow trains but
    warns (task.ready reasons, ``radtrain presets check``); below a floor it
    rejects, because no split could evaluate the model at all.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cases: int = Field(ge=1)
    positives_per_class: int = Field(ge=0)
    floor_cases: int = Field(ge=2)
    floor_positives_per_class: int = Field(0, ge=0)
    """0 for multi-label presets: a rare finding may be absent (its AUC is then undefined)."""

    @model_validator(mode="after")
    def _floors_below(self) -> Minimums:
        if self.floor_cases > self.cases or self.floor_positives_per_class > \
                self.positives_per_class:
            raise ValueError("a floor must not exceed the recommended minimum")
        return self


UNPINNED = frozenset({"id", "version", "name", "description", "minimums", "metrics"})
"""Fields that describe a preset, or what is reported, without changing what is trained
(outside the checksum)."""


class Preset(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    version: int = Field(ge=1)
    """Bumped with every change of what the preset pins (its checksum); ``id@version``
    names it in a spec and a lineage."""
    name: str
    description: str
    task_type: TaskType
    label_mode: Literal["single_label", "multi_label"]
    classes: tuple[str, ...] = Field(min_length=1)
    positive_class: str | None = None
    """For two classes: the one sensitivity is measured for (the runner's convention puts
    it last, so ``classes[1]``); thresholded at a probability of 0.5."""
    label_map: dict[str, str | None] = Field(default_factory=dict)
    """Common dataset label names (lower case) -> preset class, or ``None`` (dropped)."""
    modalities: tuple[Modality, ...]
    annotation_types: tuple[AnnotationType, ...]
    input: str
    windows: tuple[Window, ...] = ()
    image_size: int = Field(ge=32, le=2048)
    channels: int = Field(3, ge=1, le=4)
    slices: SliceContext = "current"
    """``adjacent``: previous/current/next slice in the first window (2.5D); ``current``: the
    windows of the case's own slice. Pinned like the windows (schemas/spec.py)."""
    zoo_entry: str
    recipe: ManualTuningParams
    """Hyperparameters the preset sets; tuning ``auto`` derives only the rest."""
    metrics: tuple[str, ...]
    minimums: Minimums

    @property
    def ref(self) -> str:
        """``preset_id@version``, as recorded in the spec (``preset_ref``) and lineage."""
        return f"{self.id}@{self.version}"

    def pinned(self) -> dict[str, object]:
        """What the preset pins, as JSON: classes and label map, modalities, preprocessing
        (windows, slices, size, channels), network and recipe.

        Fields at their defaults are left out, so adding a new field whose
        default keeps today's behaviour does not change any checksum.
        """
        return self.model_dump(mode="json", exclude=set(UNPINNED), exclude_defaults=True)

    def checksum(self) -> str:
        """sha256 of :meth:`pinned` (canonical JSON); pinned per version in the tests."""
        text = json.dumps(self.pinned(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @model_validator(mode="after")
    def _consistent(self) -> Preset:
        """A typo in the data must fail at load, not as a wrong model weeks later."""
        known = set(self.classes)
        bad = sorted(str(v) for v in self.label_map.values() if v is not None and v not in known)
        if bad:
            raise ValueError(f"{self.id}: label_map targets {bad} are not classes")
        if self.positive_class is not None and self.classes[-1] != self.positive_class:
            raise ValueError(f"{self.id}: the positive class must be the last class")
        unknown = sorted(set(self.metrics) - REPORTABLE)
        if unknown:
            raise ValueError(f"{self.id}: unknown metrics {unknown}")
        return self


class PresetPage(Page[Preset]):
    """``GET /v1/presets``."""


class UnknownPreset(KeyError):
    def __init__(self, preset_id: str) -> None:
        super().__init__(preset_id)
        self.preset_id = preset_id

    def __str__(self) -> str:
        return (f"unknown preset {self.preset_id!r}; one of: "
                f"{', '.join(p.id for p in list_presets())}")


@cache
def list_presets() -> tuple[Preset, ...]:
    """Parse ``presets.json`` once; the zoo entries they pin are checked by the tests."""
    text = resources.files("handlers.catalog").joinpath("presets.json").read_text("utf-8")
    return tuple(Preset.model_validate(p) for p in json.loads(text)["presets"])


def get_preset(preset_id: str) -> Preset:
    for preset in list_presets():
        if preset.id == preset_id:
            return preset
    raise UnknownPreset(preset_id)


def map_label(preset: Preset, label: str) -> tuple[bool, str | None]:
    """(known, class): a preset class as it is, else the map, case-insensitive.

    ``(True, None)`` is a label the preset drops (RSNA ``any``, derived at evaluation);
    ``(False, None)`` a label it cannot place.
    """
    if label in preset.classes:
        return True, label
    for name in (label, label.lower(), label.strip().lower().replace(" ", "_")):
        if name in preset.classes:
            return True, name
        if name in preset.label_map:
            return True, preset.label_map[name]
    return False, None
