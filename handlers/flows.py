"""The specialized and retrain flows (DESIGN.md §1): pure resolution to a TrainingSpec.

``handlers.enrich.enrich`` dispatches here for every flow but ``general``.
Both flows fix the annotation and the network (a preset, or the base task's
spec) and tune either automatically without preferences or manually, so a
request field that would choose them is a rejection reason, not ignored.
Like ``enrich``, every problem is collected and raised at once.

The base task of a retrain is loaded by the transport glue
(``handlers.transport``) and handed in as a :class:`BaseTask`, so this module
stays free of I/O and testable without NATS or a store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from handlers.catalog.presets import Preset, UnknownPreset, get_preset, map_label
from handlers.catalog.zoo import UnknownZooEntry, ZooEntry, get_entry
from handlers.enrich import Rejected, WeightsIndex, check_dataset
from handlers.tuning import auto_hyperparameters, manual_hyperparameters
from handlers.tuning import check as check_hyperparameters
from schemas.common import ErrorDetail
from schemas.dataset import DatasetSummary
from schemas.spec import (
    DatasetSnapshot,
    Lineage,
    ModelSpec,
    Preprocessing,
    TrainingSpec,
)
from schemas.tasks import (
    AutoModel,
    DataType,
    Hyperparameters,
    ManualModel,
    ManualTuning,
    ManualTuningParams,
    TaskRequested,
)

ANNOTATIONS_FOR_MODE: dict[str, tuple[str, ...]] = {
    "single_label": ("single_label",), "multi_label": ("multi_label",),
    "boxes": ("boxes",), "masks": ("masks",)}
"""Which dataset annotation a base task's label mode retrains on."""
MODALITY_GROUPS: tuple[frozenset[str], ...] = (frozenset({"CR", "DX"}),)
"""Modalities that are one input for a model (computed and digital radiography)."""


@dataclass(frozen=True)
class BaseTask:
    """What a retrain needs of its base task, as read from KV ``tasks`` and the store."""

    task_id: str
    tenant: str
    state: str
    spec: TrainingSpec | None = None
    """``runs/<task_id>/spec.json``, checked against the sha256 in its artifact record."""
    weights_key: str | None = None
    weights_sha256: str | None = None
    """``model.safetensors`` as recorded in ``task.completed``; the runner re-checks it."""


def _err(field: str, code: str, message: str) -> ErrorDetail:
    return ErrorDetail(field=field, code=code, message=message)


def dataset_errors(cmd: TaskRequested, ds: DatasetSummary | None) -> list[ErrorDetail]:
    """Found for this tenant; the annotation is checked against the fixed one, not task_type."""
    return check_dataset(cmd.model_copy(update={"task_type": None}), ds)


def fixed_network_errors(cmd: TaskRequested, fixed_by: str) -> list[ErrorDetail]:
    """A network choice or a preference has no meaning where the network is fixed."""
    if isinstance(cmd.model, ManualModel):
        return [_err("model.network", "not_allowed",
                     f"the {cmd.flow} flow's network is fixed by {fixed_by}; remove 'model'")]
    if isinstance(cmd.model, AutoModel):
        return [_err("model.preference", "not_allowed",
                     f"the {cmd.flow} flow tunes without preferences and its network is fixed "
                     f"by {fixed_by}; remove 'model' (tuning may be auto or manual)")]
    return []


def flow_field_errors(cmd: TaskRequested, fixed_task_type: str | None) -> list[ErrorDetail]:
    """The fields each non-general flow forbids or needs (the rejection table)."""
    errors: list[ErrorDetail] = []
    if cmd.flow == "specialized":
        if cmd.preset is None:
            errors.append(_err("preset", "preset_required",
                               "the specialized flow needs a preset (`radtrain presets list`)"))
        if cmd.base_task_id is not None:
            errors.append(_err("base_task_id", "not_allowed",
                               "base_task_id is only for the retrain flow"))
        errors += fixed_network_errors(cmd, f"preset {cmd.preset!r}")
    else:
        if cmd.base_task_id is None:
            errors.append(_err("base_task_id", "base_task_required",
                               "the retrain flow needs base_task_id (a completed task)"))
        if cmd.preset is not None:
            errors.append(_err("preset", "not_allowed",
                               "a retrain keeps the base task's preset; remove 'preset'"))
        errors += fixed_network_errors(cmd, f"base task {cmd.base_task_id!r}")
    if cmd.task_type is not None and fixed_task_type and cmd.task_type != fixed_task_type:
        errors.append(_err("task_type", "not_allowed",
                           f"the {cmd.flow} flow's task type is {fixed_task_type}, "
                           f"not {cmd.task_type}"))
    return errors


def class_mapping(ds: DatasetSummary, classes: list[str], preset: Preset | None,
                  base_map: dict[str, str | None]) -> tuple[dict[str, str | None], list[str]]:
    """Dataset class -> task class (or ``None``: dropped), and the classes that fit none."""
    mapping: dict[str, str | None] = {}
    unknown: list[str] = []
    for name in ds.classes:
        if name in classes:
            continue
        if name in base_map:
            mapping[name] = base_map[name]
            continue
        known, target = map_label(preset, name) if preset is not None else (False, None)
        if known:
            mapping[name] = target
        else:
            unknown.append(name)
    return mapping, unknown


def fit_errors(ds: DatasetSummary, *, what: str, modalities: tuple[str, ...],
               annotations: tuple[str, ...], classes: list[str], label_mode: str,
               mapping: dict[str, str | None], unknown: list[str]) -> list[ErrorDetail]:
    """Every way a dataset does not fit a fixed annotation, modality and class list."""
    errors = []
    if ds.modality not in modalities:
        errors.append(_err("dataset_id", "modality_mismatch",
                           f"dataset {ds.id!r} is {ds.modality}; {what} takes "
                           f"{' or '.join(modalities)}"))
    if ds.annotation_type not in annotations:
        errors.append(_err("dataset_id", "annotation_mismatch",
                           f"dataset {ds.id!r} has {ds.annotation_type} annotations; {what} "
                           f"needs {' or '.join(annotations)}"))
    for name in unknown:
        errors.append(_err("dataset_id", "class_mismatch",
                           f"dataset class {name!r} is none of {what}'s classes "
                           f"{classes} and has no known mapping onto them"))
    covered = {mapping.get(c, c) for c in ds.classes} & set(classes)
    if label_mode == "single_label":
        for name in classes:
            if name not in covered:
                errors.append(_err("dataset_id", "class_missing",
                                   f"dataset {ds.id!r} has no class for {what}'s {name!r}"))
    elif not covered and not unknown:
        errors.append(_err("dataset_id", "class_missing",
                           f"dataset {ds.id!r} has none of {what}'s classes {classes}"))
    return errors


def tune(cmd: TaskRequested, entry: ZooEntry, label_mode: str, num_cases: int,
         fixed: dict[str, Any]) -> tuple[Hyperparameters, str]:
    """Auto (no preferences) or manual; ``fixed`` (recipe, image size) fills what is unset."""
    if isinstance(cmd.tuning, ManualTuning):
        given = cmd.tuning.hyperparameters.model_dump(exclude_none=True)
        params = ManualTuningParams(**{**fixed, **given})
        hp, _ = manual_hyperparameters(params, entry, label_mode)
        return hp, (f"manual: {', '.join(sorted(given)) or 'nothing'} set; "
                    f"{', '.join(sorted(set(fixed) - set(given))) or 'nothing'} from the "
                    f"{cmd.flow} flow's recipe; the rest defaults")
    data = DataType(image_size=int(fixed.get("image_size", entry.input_size)),
                    num_cases=num_cases)
    return auto_hyperparameters(entry=entry, num_cases=num_cases, label_mode=label_mode,
                                pretrained=True, data=data, preset=fixed)


def snapshot(ds: DatasetSummary) -> DatasetSnapshot:
    return DatasetSnapshot(dataset_id=ds.id, manifest_key=ds.manifest_key,
                           sha256=ds.manifest_sha256, annotation_type=ds.annotation_type,
                           modality=ds.modality, num_cases=ds.num_cases)


def resolve_specialized(cmd: TaskRequested, ds: DatasetSummary | None,
                        weights: WeightsIndex) -> TrainingSpec:
    """Everything from the preset; only the dataset, the tuning and resources are the user's."""
    preset = None
    errors = dataset_errors(cmd, ds)
    if cmd.preset is not None:
        try:
            preset = get_preset(cmd.preset)
        except UnknownPreset as exc:
            errors.append(_err("preset", "unknown_preset", str(exc)))
    errors += flow_field_errors(cmd, preset.task_type if preset else None)
    if preset is None:
        raise Rejected(errors)
    entry = get_entry(preset.zoo_entry)  # the catalog tests pin that it exists
    classes = list(preset.classes)
    mapping: dict[str, str | None] = {}
    if ds is not None and ds.tenant == cmd.tenant:
        mapping, unknown = class_mapping(ds, classes, preset, {})
        errors += fit_errors(ds, what=f"preset {preset.id!r}", modalities=preset.modalities,
                             annotations=preset.annotation_types, classes=classes,
                             label_mode=preset.label_mode, mapping=mapping, unknown=unknown)
    ref = weights.find(entry.id)
    if ref is None:
        errors.append(_err("model.pretrained", "weights_missing",
                           f"preset {preset.id!r} needs the weights of {entry.id}; stage them "
                           f"with `radtrain zoo mirror {entry.id}`"))
    fixed = {**preset.recipe.model_dump(exclude_none=True), "image_size": preset.image_size}
    hp, why = tune(cmd, entry, preset.label_mode, ds.num_cases if ds else 1, fixed)
    errors += check_hyperparameters(hp, entry, preset.label_mode)
    if errors or ds is None or ref is None:
        raise Rejected(errors)
    return TrainingSpec(
        task_id=cmd.task_id, tenant=cmd.tenant, name=cmd.name, description=cmd.description,
        flow="specialized", task_type=preset.task_type, dataset=snapshot(ds),
        classes=classes, label_mode=preset.label_mode,
        preprocessing=Preprocessing(image_size=hp.image_size, channels=preset.channels,
                                    windows=list(preset.windows), mean=entry.mean,
                                    std=entry.std),
        model=ModelSpec(entry_id=entry.id, builder=entry.builder, network=entry.network,
                        pretrained=True, weights_key=ref.key, weights_sha256=ref.sha256,
                        num_classes=len(classes), in_chans=preset.channels),
        hyperparameters=hp, resources=cmd.resources, preset=preset.id, class_map=mapping,
        metrics=list(preset.metrics),
        reasons={"model": f"preset {preset.id}: {entry.id} ({entry.pretrained_on})",
                 "preprocessing": f"preset {preset.id}: {preset.input}",
                 "hyperparameters": why})


def base_task_errors(cmd: TaskRequested, base: BaseTask | None) -> list[ErrorDetail]:
    """The base must exist for this tenant, be completed, and have its spec and weights."""
    if cmd.base_task_id is None:
        return []
    if base is None or base.tenant != cmd.tenant:  # another tenant's task looks absent
        return [_err("base_task_id", "base_task_not_found",
                     f"task {cmd.base_task_id!r} does not exist for tenant {cmd.tenant!r}")]
    if base.state != "completed":
        return [_err("base_task_id", "base_task_not_completed",
                     f"task {base.task_id!r} is {base.state}; only a completed task "
                     "can be retrained")]
    errors = []
    if base.spec is None:
        errors.append(_err("base_task_id", "base_spec_missing",
                           f"task {base.task_id!r} has no readable spec.json"))
    if base.weights_key is None or base.weights_sha256 is None:
        errors.append(_err("base_task_id", "base_weights_missing",
                           f"task {base.task_id!r} has no model.safetensors artifact"))
    return errors


def base_modalities(spec: TrainingSpec) -> tuple[str, ...]:
    if spec.preset is not None:
        try:
            return tuple(get_preset(spec.preset).modalities)
        except UnknownPreset:
            pass
    for group in MODALITY_GROUPS:
        if spec.dataset.modality in group:
            return tuple(sorted(group))
    return (spec.dataset.modality,)


def resolve_retrain(cmd: TaskRequested, ds: DatasetSummary | None,
                    base: BaseTask | None) -> TrainingSpec:
    """Network, classes and preprocessing from the base spec, weights from its model."""
    base_errors = base_task_errors(cmd, base)
    errors = dataset_errors(cmd, ds) + base_errors
    bs = base.spec if base is not None and not base_errors else None
    errors += flow_field_errors(cmd, bs.task_type if bs else None)
    if bs is None or base is None or base.weights_key is None or base.weights_sha256 is None:
        raise Rejected(errors)
    preset = get_preset(bs.preset) if bs.preset is not None else None
    mapping: dict[str, str | None] = {}
    if ds is not None and ds.tenant == cmd.tenant:
        mapping, unknown = class_mapping(ds, bs.classes, preset, bs.class_map)
        errors += fit_errors(ds, what=f"base task {base.task_id!r}",
                             modalities=base_modalities(bs),
                             annotations=ANNOTATIONS_FOR_MODE[bs.label_mode],
                             classes=bs.classes, label_mode=bs.label_mode, mapping=mapping,
                             unknown=unknown)
    try:
        entry = get_entry(bs.model.entry_id)
    except UnknownZooEntry as exc:
        raise Rejected([*errors, _err("base_task_id", "unknown_network", str(exc))]) from exc
    size = bs.preprocessing.image_size
    recipe = preset.recipe.model_dump(exclude_none=True) if preset else {}
    hp, why = tune(cmd, entry, bs.label_mode, ds.num_cases if ds else 1,
                   {**recipe, "image_size": size})
    errors += check_hyperparameters(hp, entry, bs.label_mode)
    if hp.image_size != size:
        errors.append(_err("tuning.hyperparameters.image_size", "not_allowed",
                           f"a retrain keeps the base task's preprocessing ({size} px), "
                           f"not {hp.image_size}"))
    if errors or ds is None:
        raise Rejected(errors)
    return TrainingSpec(
        task_id=cmd.task_id, tenant=cmd.tenant, name=cmd.name, description=cmd.description,
        flow="retrain", task_type=bs.task_type, dataset=snapshot(ds), classes=list(bs.classes),
        label_mode=bs.label_mode, preprocessing=bs.preprocessing,
        model=bs.model.model_copy(update={"pretrained": True, "weights_key": base.weights_key,
                                          "weights_sha256": base.weights_sha256}),
        hyperparameters=hp, resources=cmd.resources, preset=bs.preset, class_map=mapping,
        metrics=list(bs.metrics),
        lineage=Lineage(base_task_id=base.task_id, base_dataset_id=bs.dataset.dataset_id,
                        base_dataset_sha256=bs.dataset.sha256,
                        base_weights_sha256=base.weights_sha256),
        reasons={"model": f"retrain of {base.task_id}: {bs.model.entry_id} with its trained "
                          f"weights (sha256 {base.weights_sha256[:12]})",
                 "hyperparameters": why})
