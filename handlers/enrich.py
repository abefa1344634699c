"""The enrich handler: ``TaskRequested -> TrainingSpec`` or every reason it cannot be.

Pure logic: the dataset summary and the weights index are handed in, so it is
testable without NATS or a store. All checks run and every failure is
collected, so a user fixes a request in one round trip, not one per error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from handlers.catalog.select import rank
from handlers.catalog.zoo import UnknownZooEntry, ZooEntry, get_entry
from handlers.tuning import auto_hyperparameters, manual_hyperparameters
from handlers.tuning import check as check_hyperparameters
from schemas.common import ErrorDetail
from schemas.dataset import DatasetSummary
from schemas.spec import (
    DatasetSnapshot,
    LabelMode,
    ModelSpec,
    Preprocessing,
    TrainingSpec,
    Window,
)
from schemas.tasks import (
    AutoModel,
    DataType,
    Hyperparameters,
    ManualModel,
    ManualTuning,
    TaskRequested,
)

if TYPE_CHECKING:
    from handlers.flows import BaseTask

CLASSIFICATION_ANNOTATIONS = ("single_label", "multi_label")
ANNOTATIONS_FOR: dict[str, tuple[str, ...]] = {
    "classification": CLASSIFICATION_ANNOTATIONS, "detection": ("boxes",),
    "segmentation": ("masks",)}
"""Which dataset annotation types each task type trains on."""
SUPPORTED_FLOWS = ("general", "specialized", "retrain")
AUTO_CANDIDATES = 40
"""How far down the ranking auto-select looks for an entry with mirrored weights."""
SUPPORTED_TASK_TYPES = ("classification", "detection", "segmentation")

CT_WINDOWS = (
    Window(name="brain", center=40, width=80),
    Window(name="subdural", center=80, width=200),
    Window(name="bone", center=600, width=2800),
)


@dataclass(frozen=True)
class WeightsRef:
    key: str
    sha256: str


class WeightsIndex(Protocol):
    def find(self, entry_id: str) -> WeightsRef | None: ...


class Rejected(Exception):
    def __init__(self, errors: list[ErrorDetail]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


def _err(field: str, code: str, message: str) -> ErrorDetail:
    return ErrorDetail(field=field, code=code, message=message)


def check_dataset(cmd: TaskRequested, ds: DatasetSummary | None) -> list[ErrorDetail]:
    if ds is None or ds.tenant != cmd.tenant:
        return [_err("dataset_id", "dataset_not_found",
                     f"dataset {cmd.dataset_id!r} does not exist for tenant {cmd.tenant!r}")]
    errors = []
    wanted = ANNOTATIONS_FOR.get(cmd.task_type or "", ())
    if wanted and ds.annotation_type not in wanted:
        errors.append(_err("dataset_id", "annotation_mismatch",
                           f"dataset {ds.id!r} has {ds.annotation_type} annotations; "
                           f"{cmd.task_type} needs {' or '.join(wanted)}"))
    if ds.annotation_type == "single_label" and len(ds.classes) < 2:
        errors.append(_err("dataset_id", "too_few_classes",
                           f"dataset {ds.id!r} has {len(ds.classes)} class; need at least 2"))
    return errors


def label_mode_of(ds: DatasetSummary) -> LabelMode:
    """Boxes and masks train as they are; any other annotation as single/multi-label."""
    if ds.annotation_type in ("boxes", "masks", "multi_label"):
        return ds.annotation_type
    return "single_label"


def num_classes_of(label_mode: str, classes: list[str]) -> int:
    """Detectors and segmenters reserve index 0 for the background."""
    return len(classes) + 1 if label_mode in ("boxes", "masks") else len(classes)


def check_flow(cmd: TaskRequested) -> list[ErrorDetail]:
    errors = []
    if cmd.flow not in SUPPORTED_FLOWS:
        errors.append(_err("flow", "unsupported_flow",
                           f"flow {cmd.flow!r} is not one of {', '.join(SUPPORTED_FLOWS)}"))
    if cmd.task_type is not None and cmd.task_type not in SUPPORTED_TASK_TYPES:
        errors.append(_err("task_type", "unsupported_task_type",
                           f"task_type {cmd.task_type!r} is not available yet; "
                           "use 'classification'"))
    if cmd.flow == "general" and cmd.preset is not None:
        errors.append(_err("preset", "not_allowed", "preset is only for the specialized flow"))
    if cmd.flow == "general" and cmd.base_task_id is not None:
        errors.append(_err("base_task_id", "not_allowed",
                           "base_task_id is only for the retrain flow"))
    return errors


def data_type_for(choice: AutoModel, ds: DatasetSummary | None) -> DataType:
    """What the request says about its data, completed from the dataset where it is silent."""
    given = choice.data_type
    if ds is None:
        return given
    known = {"num_cases": ds.num_cases, "modality": ds.modality}
    return given.model_copy(update={k: v for k, v in known.items()
                                    if k not in given.model_fields_set})


def auto_select(choice: AutoModel, task_type: str, ds: DatasetSummary | None,
                weights: WeightsIndex) -> tuple[ZooEntry, WeightsRef | None, dict[str, str]]:
    """The best-ranked entry whose weights are mirrored (handlers/catalog/select.py).

    Falls back to the top entry (and so a ``weights_missing`` rejection naming
    it) when none of the leading candidates has weights in the store.
    """
    data = data_type_for(choice, ds)
    ranked = rank(task_type, data, choice.preference, limit=AUTO_CANDIDATES,
                  one_per_network=False)
    if not ranked:
        raise UnknownZooEntry(f"<any {task_type} entry>")
    top5 = ", ".join(f"{r.entry.id} ({r.score:g})" for r in ranked[:5])
    reasons = {"model.ranking": f"best for {task_type}, {data.num_cases} {data.modality} "
                                f"cases at {data.image_size} px: {top5}"}
    for pos, r in enumerate(ranked, 1):
        ref = weights.find(r.entry.id)
        if ref is not None:
            skipped = [x.entry.id for x in ranked[:pos - 1]]
            reasons["model"] = (f"auto-select #{pos}: {r.entry.id}, score {r.score:g}; {r.reason}"
                                + (f"; higher-ranked {', '.join(skipped[:3])} have no mirrored "
                                   f"weights (`radtrain zoo mirror {skipped[0]}`)"
                                   if skipped else ""))
            return r.entry, ref, reasons
    reasons["model"] = f"auto-select #1: {ranked[0].entry.id}; {ranked[0].reason}"
    return ranked[0].entry, None, reasons


def resolve_model(
    cmd: TaskRequested, weights: WeightsIndex, ds: DatasetSummary | None = None
) -> tuple[ZooEntry | None, bool, WeightsRef | None, list[ErrorDetail], dict[str, str]]:
    choice = cmd.model or AutoModel(mode="auto")
    task_type = cmd.task_type or "classification"
    if isinstance(choice, ManualModel):
        try:
            entry = get_entry(choice.network)
        except UnknownZooEntry as exc:
            return None, False, None, [_err("model.network", "unknown_network", str(exc))], {}
        pretrained = choice.pretrained
        ref = weights.find(entry.id) if pretrained else None
        init = f"pretrained on {entry.pretrained_on}" if pretrained else "random init"
        reasons = {"model": f"manual choice {entry.id} ({init}, {entry.params_m:g}M params, "
                            f"{entry.gmacs:g} GMACs)"}
    else:
        try:
            entry, ref, reasons = auto_select(choice, task_type, ds, weights)
        except UnknownZooEntry as exc:
            return None, False, None, [_err("model", "no_candidates", str(exc))], {}
        pretrained = True
    errors = []
    if cmd.task_type not in entry.task_types:
        errors.append(_err("model.network", "task_type_mismatch",
                           f"{entry.id} supports {list(entry.task_types)}, not {cmd.task_type}"))
    if pretrained and ref is None:
        errors.append(_err(
            "model.pretrained", "weights_missing",
            f"no pretrained weights for {entry.id} in the store; stage them with "
            f"`radtrain zoo mirror {entry.id}` or request \"pretrained\": false"))
    return entry, pretrained, ref, errors, reasons


def resolve_hyperparameters(
    cmd: TaskRequested, ds: DatasetSummary, entry: ZooEntry, pretrained: bool
) -> tuple[Hyperparameters, str]:
    """The complete set (handlers/tuning.py): manual fields as given, else derived."""
    label_mode = label_mode_of(ds)
    if isinstance(cmd.tuning, ManualTuning):
        return manual_hyperparameters(cmd.tuning.hyperparameters, entry, label_mode)
    auto = cmd.model if isinstance(cmd.model, AutoModel) else None
    return auto_hyperparameters(
        entry=entry, num_cases=ds.num_cases, label_mode=label_mode, pretrained=pretrained,
        preference=auto.preference if auto else None,
        data=data_type_for(auto, ds) if auto else None)


def preprocessing_for(ds: DatasetSummary, entry: ZooEntry, image_size: int) -> Preprocessing:
    windows = list(CT_WINDOWS) if ds.modality == "CT" else []
    return Preprocessing(image_size=image_size, channels=3, windows=windows,
                         mean=entry.mean, std=entry.std)


def enrich(cmd: TaskRequested, ds: DatasetSummary | None, weights: WeightsIndex,
           base: BaseTask | None = None) -> TrainingSpec:
    """``base`` is the retrain flow's base task, loaded by the transport glue."""
    if cmd.flow != "general":
        # Imported here: handlers.flows builds on this module's checks.
        from handlers.flows import resolve_retrain, resolve_specialized

        if cmd.flow == "specialized":
            return resolve_specialized(cmd, ds, weights)
        return resolve_retrain(cmd, ds, base)
    errors = check_flow(cmd) + check_dataset(cmd, ds)
    entry, pretrained, ref, model_errors, reasons = resolve_model(cmd, weights, ds)
    errors += model_errors
    if ds is not None and entry is not None:
        hp, reasons["hyperparameters"] = resolve_hyperparameters(cmd, ds, entry, pretrained)
        errors += check_hyperparameters(hp, entry, label_mode_of(ds))
    if errors or ds is None or entry is None:
        raise Rejected(errors)
    label_mode = label_mode_of(ds)
    return TrainingSpec(
        task_id=cmd.task_id,
        tenant=cmd.tenant,
        name=cmd.name,
        description=cmd.description,
        flow=cmd.flow,
        task_type=cmd.task_type or "classification",
        dataset=DatasetSnapshot(dataset_id=ds.id, manifest_key=ds.manifest_key,
                                sha256=ds.manifest_sha256, annotation_type=ds.annotation_type,
                                modality=ds.modality, num_cases=ds.num_cases),
        classes=list(ds.classes),
        label_mode=label_mode,
        preprocessing=preprocessing_for(ds, entry, hp.image_size),
        model=ModelSpec(entry_id=entry.id, builder=entry.builder, network=entry.network,
                        pretrained=pretrained, weights_key=ref.key if ref else None,
                        weights_sha256=ref.sha256 if ref else None,
                        num_classes=num_classes_of(label_mode, ds.classes), in_chans=3),
        hyperparameters=hp,
        resources=cmd.resources,
        reasons=reasons,
    )
