"""The enrich handler: ``TaskRequested -> TrainingSpec`` or every reason it cannot be.

Pure logic: the dataset summary and the weights index are handed in, so it is
testable without NATS or a store. All checks run and every failure is
collected, so a user fixes a request in one round trip, not one per error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from handlers.catalog.zoo import UnknownZooEntry, ZooEntry, get_entry
from schemas.common import ErrorDetail
from schemas.dataset import DatasetSummary
from schemas.spec import DatasetSnapshot, ModelSpec, Preprocessing, TrainingSpec, Window
from schemas.tasks import AutoModel, Hyperparameters, ManualModel, ManualTuning, TaskRequested

CLASSIFICATION_ANNOTATIONS = ("single_label", "multi_label")
SUPPORTED_FLOWS = ("general",)
SUPPORTED_TASK_TYPES = ("classification",)

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
    if cmd.task_type == "classification" and ds.annotation_type not in CLASSIFICATION_ANNOTATIONS:
        errors.append(_err("dataset_id", "annotation_mismatch",
                           f"dataset {ds.id!r} has {ds.annotation_type} annotations; "
                           "classification needs single_label or multi_label"))
    if ds.annotation_type == "single_label" and len(ds.classes) < 2:
        errors.append(_err("dataset_id", "too_few_classes",
                           f"dataset {ds.id!r} has {len(ds.classes)} class; need at least 2"))
    return errors


def check_flow(cmd: TaskRequested) -> list[ErrorDetail]:
    errors = []
    if cmd.flow not in SUPPORTED_FLOWS:
        errors.append(_err("flow", "unsupported_flow",
                           f"flow {cmd.flow!r} is not available yet; use 'general'"))
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


def auto_select(choice: AutoModel, task_type: str) -> tuple[ZooEntry, str]:
    """Smallest sensible default per preference; the full ranking lives in the zoo issue."""
    pref = choice.preference
    if pref.goal == "fastest" or pref.target in ("cpu", "edge"):
        entry_id = "mobilenetv3_small_100"
    elif pref.goal == "most_accurate":
        entry_id = "convnext_tiny"
    else:
        entry_id = "efficientnet_lite0"
    entry = get_entry(entry_id)
    assert task_type in entry.task_types
    reason = (f"goal={pref.goal}, target={pref.target}: {entry.id} "
              f"({entry.params_m}M params, {entry.speed})")
    return entry, reason


def resolve_model(
    cmd: TaskRequested, weights: WeightsIndex
) -> tuple[ZooEntry | None, bool, WeightsRef | None, list[ErrorDetail], dict[str, str]]:
    choice = cmd.model or AutoModel(mode="auto")
    reasons: dict[str, str] = {}
    if isinstance(choice, ManualModel):
        try:
            entry = get_entry(choice.network)
        except UnknownZooEntry as exc:
            return None, False, None, [_err("model.network", "unknown_network", str(exc))], {}
        pretrained = choice.pretrained
        reasons["model"] = f"manual choice {entry.id}"
    else:
        entry, reasons["model"] = auto_select(choice, cmd.task_type or "classification")
        pretrained = True
    errors = []
    if cmd.task_type not in entry.task_types:
        errors.append(_err("model.network", "task_type_mismatch",
                           f"{entry.id} supports {list(entry.task_types)}, not {cmd.task_type}"))
    ref = weights.find(entry.id) if pretrained else None
    if pretrained and ref is None:
        errors.append(_err(
            "model.pretrained", "weights_missing",
            f"no pretrained weights for {entry.id} in the store; stage them with "
            f"`radtrain zoo mirror {entry.id}` or request \"pretrained\": false"))
    return entry, pretrained, ref, errors, reasons


def resolve_hyperparameters(
    cmd: TaskRequested, ds: DatasetSummary, entry: ZooEntry, pretrained: bool
) -> tuple[Hyperparameters, str]:
    if isinstance(cmd.tuning, ManualTuning):
        given = cmd.tuning.hyperparameters.model_dump(exclude_none=True)
        return Hyperparameters(**given), f"manual: {sorted(given)} set, the rest default"
    n = ds.num_cases
    epochs = 30 if n < 300 else 15 if n < 3000 else 8
    lr = 3e-4 if pretrained else 1e-3
    hp = Hyperparameters(
        learning_rate=lr,
        epochs=epochs,
        batch_size=16 if n < 2000 else 32,
        warmup_epochs=1,
        image_size=min(entry.input_size, 512),
        augmentation="strong" if n < 500 else "light",
        class_weighting="balanced",
        early_stopping_patience=5,
    )
    reason = (f"auto: {n} cases -> {epochs} epochs, lr {lr:g} "
              f"({'fine-tuning' if pretrained else 'from scratch'}), "
              f"{hp.augmentation} augmentation, early stopping after 5 flat epochs")
    return hp, reason


def preprocessing_for(ds: DatasetSummary, entry: ZooEntry, image_size: int) -> Preprocessing:
    windows = list(CT_WINDOWS) if ds.modality == "CT" else []
    return Preprocessing(image_size=image_size, channels=3, windows=windows,
                         mean=entry.mean, std=entry.std)


def enrich(cmd: TaskRequested, ds: DatasetSummary | None, weights: WeightsIndex) -> TrainingSpec:
    errors = check_flow(cmd) + check_dataset(cmd, ds)
    entry, pretrained, ref, model_errors, reasons = resolve_model(cmd, weights)
    errors += model_errors
    if errors or ds is None or entry is None:
        raise Rejected(errors)
    hp, reasons["hyperparameters"] = resolve_hyperparameters(cmd, ds, entry, pretrained)
    label_mode = "multi_label" if ds.annotation_type == "multi_label" else "single_label"
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
                        num_classes=len(ds.classes), in_chans=3),
        hyperparameters=hp,
        resources=cmd.resources,
        reasons=reasons,
    )
