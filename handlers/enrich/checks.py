"""The checks every flow shares: the flows table's fields, the dataset's fit, the weights,
tuning from a fixed recipe and the dataset snapshot.

Each check returns the list of what is wrong (empty: nothing), never raises,
so a resolver collects all of them before it rejects (``handlers/enrich/resolver.py``).
"""

from __future__ import annotations

from typing import Any

from handlers.catalog.presets import Preset, map_label
from handlers.catalog.zoo import ZooEntry
from handlers.enrich.contracts import WeightsIndex, WeightsRef, err
from handlers.tuning import auto_hyperparameters, manual_hyperparameters
from schemas.common import ErrorDetail
from schemas.dataset import DatasetSummary
from schemas.flows import FlowRule
from schemas.spec import DatasetSnapshot, LabelMode
from schemas.tasks import (
    AutoModel,
    DataType,
    Hyperparameters,
    ManualModel,
    ManualTuning,
    ManualTuningParams,
    TaskRequested,
)

REQUIRED_CODES = {"task_type": "task_type_required", "preset": "preset_required",
                  "base_task_id": "base_task_required"}
HINTS = {"task_type": "one of classification, detection, segmentation",
         "preset": "`radtrain presets list`", "base_task_id": "a completed task"}
FIELD_RULES = ("task_type", "preset", "base_task_id")
"""Request fields the table rules on one by one; ``model`` and ``tuning`` by their mode."""


# --- the flows table --------------------------------------------------------------


def fixed_by(cmd: TaskRequested, rule: FlowRule) -> str:
    """Who fixes what the request does not choose in this flow, for messages."""
    if rule.annotation_from == "preset":
        return f"the preset {cmd.preset!r}" if cmd.preset else "the preset"
    if rule.annotation_from == "base_task":
        return f"the base task {cmd.base_task_id!r}" if cmd.base_task_id else "the base task"
    return "the request"


def request_field_errors(cmd: TaskRequested, rule: FlowRule,
                         takers: dict[str, list[str]]) -> list[ErrorDetail]:
    """Every field ``rule`` forbids that is set, or needs that is missing.

    ``takers``: field -> the flows that take it, to say where it belongs.
    """
    errors: list[ErrorDetail] = []
    for name in FIELD_RULES:
        given = getattr(cmd, name) is not None
        wanted = getattr(rule, name)
        if given and wanted == "forbidden":
            where = " or ".join(takers.get(name, [])) or "no"
            errors.append(err(name, "not_allowed",
                              f"the {rule.flow} flow does not take {name} (only the {where} "
                              f"flow does); remove it"))
        elif not given and wanted == "required":
            errors.append(err(name, REQUIRED_CODES[name],
                              f"the {rule.flow} flow needs {name} ({HINTS[name]})"))
    if isinstance(cmd.model, ManualModel) and "manual" not in rule.network:
        errors.append(err("model.network", "not_allowed",
                          f"the {rule.flow} flow's network is fixed by {fixed_by(cmd, rule)}; "
                          "remove 'model'"))
    elif isinstance(cmd.model, AutoModel) and "auto" not in rule.network:
        errors.append(err("model.preference", "not_allowed",
                          f"the {rule.flow} flow tunes {' or '.join(describe(rule.tuning))} "
                          f"and its network is fixed by {fixed_by(cmd, rule)}; remove 'model'"))
    mode = cmd.tuning.mode
    if not any(m.startswith(mode) for m in rule.tuning):
        errors.append(err("tuning.mode", "not_allowed",
                          f"the {rule.flow} flow tunes {' or '.join(describe(rule.tuning))}, "
                          f"not {mode}"))
    return errors


def describe(modes: tuple[str, ...]) -> list[str]:
    return [m.replace("_", " ") for m in modes]


def task_type_errors(cmd: TaskRequested, rule: FlowRule,
                     fixed: str | None = None) -> list[ErrorDetail]:
    """A given task type must be one the flow trains and equal the fixed one, if any."""
    if cmd.task_type is None:
        return []
    if cmd.task_type not in rule.task_types:
        code = "unsupported_task_type" if rule.task_type_from == "request" else "not_allowed"
        return [err("task_type", code, f"the {rule.flow} flow trains "
                                       f"{' or '.join(rule.task_types)}, not {cmd.task_type}")]
    if fixed is not None and cmd.task_type != fixed:
        return [err("task_type", "not_allowed",
                    f"the {rule.flow} flow's task type is {fixed} (fixed by "
                    f"{fixed_by(cmd, rule)}), not {cmd.task_type}")]
    return []


# --- the dataset --------------------------------------------------------------------


def found(cmd: TaskRequested, ds: DatasetSummary | None) -> DatasetSummary | None:
    """The dataset if it exists for the caller's tenant (another tenant's looks absent)."""
    return ds if ds is not None and ds.tenant == cmd.tenant else None


def dataset_errors(cmd: TaskRequested, ds: DatasetSummary | None) -> list[ErrorDetail]:
    """Found for this tenant, and trainable at all (a single-label set needs two classes)."""
    ds = found(cmd, ds)
    if ds is None:
        return [err("dataset_id", "dataset_not_found",
                    f"dataset {cmd.dataset_id!r} does not exist for tenant {cmd.tenant!r}")]
    if ds.annotation_type == "single_label" and len(ds.classes) < 2:
        return [err("dataset_id", "too_few_classes",
                    f"dataset {ds.id!r} has {len(ds.classes)} class; need at least 2")]
    return []


def annotation_errors(ds: DatasetSummary, rule: FlowRule, task_type: str) -> list[ErrorDetail]:
    """Where the annotation follows the task type: the dataset's must be one it takes."""
    wanted = rule.annotations_for(task_type)
    if not wanted or ds.annotation_type in wanted:
        return []
    return [err("dataset_id", "annotation_mismatch",
                f"dataset {ds.id!r} has {ds.annotation_type} annotations; "
                f"{task_type} needs {' or '.join(wanted)}")]


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
        errors.append(err("dataset_id", "modality_mismatch",
                          f"dataset {ds.id!r} is {ds.modality}; {what} takes "
                          f"{' or '.join(modalities)}"))
    if ds.annotation_type not in annotations:
        errors.append(err("dataset_id", "annotation_mismatch",
                          f"dataset {ds.id!r} has {ds.annotation_type} annotations; {what} "
                          f"needs {' or '.join(annotations)}"))
    for name in unknown:
        errors.append(err("dataset_id", "class_mismatch",
                          f"dataset class {name!r} is none of {what}'s classes "
                          f"{classes} and has no known mapping onto them"))
    covered = {mapping.get(c, c) for c in ds.classes} & set(classes)
    if label_mode == "single_label":
        for name in classes:
            if name not in covered:
                errors.append(err("dataset_id", "class_missing",
                                  f"dataset {ds.id!r} has no class for {what}'s {name!r}"))
    elif not covered and not unknown:
        errors.append(err("dataset_id", "class_missing",
                          f"dataset {ds.id!r} has none of {what}'s classes {classes}"))
    return errors


def label_mode_of(ds: DatasetSummary) -> LabelMode:
    """Boxes and masks train as they are; any other annotation as single/multi-label."""
    if ds.annotation_type in ("boxes", "masks", "multi_label"):
        return ds.annotation_type
    return "single_label"


def num_classes_of(label_mode: str, classes: list[str]) -> int:
    """Detectors and segmenters reserve index 0 for the background."""
    return len(classes) + 1 if label_mode in ("boxes", "masks") else len(classes)


def snapshot(ds: DatasetSummary) -> DatasetSnapshot:
    """The exact manifest a task trains on (its sha256 pins it)."""
    return DatasetSnapshot(dataset_id=ds.id, manifest_key=ds.manifest_key,
                           sha256=ds.manifest_sha256, annotation_type=ds.annotation_type,
                           modality=ds.modality, num_cases=ds.num_cases)


# --- weights and tuning -------------------------------------------------------------


def find_weights(weights: WeightsIndex, entry: ZooEntry, *, needed_by: str | None = None,
                 scratch_ok: bool = False) -> tuple[WeightsRef | None, list[ErrorDetail]]:
    """The mirrored pretrained weights of ``entry``, or why there are none."""
    ref = weights.find(entry.id)
    if ref is not None:
        return ref, []
    return None, [missing_weights(entry, needed_by=needed_by, scratch_ok=scratch_ok)]


def missing_weights(entry: ZooEntry, *, needed_by: str | None = None,
                    scratch_ok: bool = False) -> ErrorDetail:
    """``weights_missing``, naming the command that stages them."""
    who = f"{needed_by} needs the weights of {entry.id}" if needed_by else \
        f"no pretrained weights for {entry.id} in the store"
    scratch = " or request \"pretrained\": false" if scratch_ok else ""
    return err("model.pretrained", "weights_missing",
               f"{who}; stage them with `radtrain zoo mirror {entry.id}`{scratch}")


def tune_fixed(cmd: TaskRequested, entry: ZooEntry, label_mode: str, num_cases: int,
               fixed: dict[str, Any]) -> tuple[Hyperparameters, str]:
    """Auto without preferences, or manual; ``fixed`` (recipe, image size) fills what is unset."""
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
