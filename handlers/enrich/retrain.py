"""The retrain flow: a completed task's network, classes, preprocessing and trained weights,
further trained on a new dataset with the same annotation; tuning auto without
preferences or manual. The base task is loaded by ``handlers/enrich/handler.py``."""

from __future__ import annotations

from handlers.catalog.presets import Preset, UnknownPreset, get_preset
from handlers.catalog.zoo import UnknownZooEntry, get_entry
from handlers.enrich.checks import class_mapping, fit_errors, task_type_errors, tune_fixed
from handlers.enrich.contracts import BaseTask, err
from handlers.enrich.resolver import Draft, Resolver
from handlers.enrich.windows import pinned_errors
from handlers.tuning import check as check_hyperparameters
from schemas.common import ErrorDetail
from schemas.spec import Lineage, TrainingSpec
from schemas.tasks import TaskRequested

ANNOTATIONS_FOR_MODE: dict[str, tuple[str, ...]] = {
    "single_label": ("single_label",), "multi_label": ("multi_label",),
    "boxes": ("boxes",), "masks": ("masks",)}
"""Which dataset annotation a base task's label mode retrains on."""
MODALITY_GROUPS: tuple[frozenset[str], ...] = (frozenset({"CR", "DX"}),)
"""Modalities that are one input for a model (computed and digital radiography)."""


def base_task_errors(cmd: TaskRequested, base: BaseTask | None) -> list[ErrorDetail]:
    """The base must exist for this tenant, be completed, and have its spec and weights."""
    if cmd.base_task_id is None:
        return []  # base_task_required, from the flows table
    if base is None or base.tenant != cmd.tenant:  # another tenant's task looks absent
        return [err("base_task_id", "base_task_not_found",
                    f"task {cmd.base_task_id!r} does not exist for tenant {cmd.tenant!r}")]
    if base.state != "completed":
        return [err("base_task_id", "base_task_not_completed",
                    f"task {base.task_id!r} is {base.state}; only a completed task "
                    "can be retrained")]
    errors = []
    if base.spec is None:
        errors.append(err("base_task_id", "base_spec_missing",
                          f"task {base.task_id!r} has no readable spec.json"))
    if base.weights_key is None or base.weights_sha256 is None:
        errors.append(err("base_task_id", "base_weights_missing",
                          f"task {base.task_id!r} has no model.safetensors artifact"))
    return errors


def preset_of(spec: TrainingSpec) -> Preset | None:
    """The base's preset, if it had one still in the catalog."""
    if spec.preset is None:
        return None
    try:
        return get_preset(spec.preset)
    except UnknownPreset:
        return None


def base_modalities(spec: TrainingSpec) -> tuple[str, ...]:
    preset = preset_of(spec)
    if preset is not None:
        return tuple(preset.modalities)
    for group in MODALITY_GROUPS:
        if spec.dataset.modality in group:
            return tuple(sorted(group))
    return (spec.dataset.modality,)


class RetrainResolver(Resolver):
    flow = "retrain"

    def draft(self) -> Draft | None:
        cmd, ds, base = self.cmd, self.ds, self.base
        base_errors = base_task_errors(cmd, base)
        self.check(base_errors)
        self.check(pinned_errors(cmd, "the base task"))
        bs = base.spec if base is not None and not base_errors else None
        self.check(task_type_errors(cmd, self.rule, bs.task_type if bs else None))
        if bs is None or base is None or base.weights_key is None \
                or base.weights_sha256 is None:
            return None
        preset = preset_of(bs)
        mapping: dict[str, str | None] = {}
        if ds is not None:
            mapping, unknown = class_mapping(ds, bs.classes, preset, bs.class_map)
            self.check(fit_errors(ds, what=f"base task {base.task_id!r}",
                                  modalities=base_modalities(bs),
                                  annotations=ANNOTATIONS_FOR_MODE[bs.label_mode],
                                  classes=bs.classes, label_mode=bs.label_mode,
                                  mapping=mapping, unknown=unknown))
        try:
            entry = get_entry(bs.model.entry_id)
        except UnknownZooEntry as exc:
            self.check([err("base_task_id", "unknown_network", str(exc))])
            return None
        size = bs.preprocessing.image_size
        recipe = preset.recipe.model_dump(exclude_none=True) if preset else {}
        hp, why = tune_fixed(cmd, entry, bs.label_mode, ds.num_cases if ds else 1,
                             {**recipe, "image_size": size})
        self.check(check_hyperparameters(hp, entry, bs.label_mode))
        if hp.image_size != size:
            self.check([err("tuning.hyperparameters.image_size", "not_allowed",
                            f"a retrain keeps the base task's preprocessing ({size} px), "
                            f"not {hp.image_size}")])
        return Draft(
            task_type=bs.task_type, classes=list(bs.classes), label_mode=bs.label_mode,
            preprocessing=bs.preprocessing,
            model=bs.model.model_copy(update={"pretrained": True,
                                              "weights_key": base.weights_key,
                                              "weights_sha256": base.weights_sha256}),
            hyperparameters=hp, preset=bs.preset, preset_ref=bs.preset_ref, class_map=mapping,
            metrics=list(bs.metrics),
            lineage=Lineage(base_task_id=base.task_id, base_dataset_id=bs.dataset.dataset_id,
                            base_dataset_sha256=bs.dataset.sha256,
                            base_weights_sha256=base.weights_sha256,
                            base_preset_ref=bs.preset_ref),
            reasons={"model": f"retrain of {base.task_id}: {bs.model.entry_id} with its "
                              f"trained weights (sha256 {base.weights_sha256[:12]})",
                     "hyperparameters": why})
