"""TrainingSpec: a fully resolved task, the payload of ``task.ready``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.common import Identifier, Strict, ZooId
from schemas.dataset import AnnotationType
from schemas.tasks import Flow, Hyperparameters, Modality, TaskType

LabelMode = Literal["single_label", "multi_label", "boxes", "masks"]
Builder = Literal["timm", "torchvision_detection", "timm_unet", "torchvision_segmentation"]


class DatasetSnapshot(Strict):
    dataset_id: Identifier
    manifest_key: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    annotation_type: AnnotationType
    modality: Modality
    num_cases: int = Field(ge=1)


class Window(Strict):
    name: str
    center: float
    width: float = Field(gt=0)


class Preprocessing(Strict):
    """How pixels become tensors. Windows stack as channels for CT."""

    image_size: int = Field(ge=16, le=4096)
    channels: int = Field(ge=1, le=4)
    windows: list[Window] = Field(default_factory=list)
    mean: tuple[float, ...]
    std: tuple[float, ...]


class ModelSpec(Strict):
    entry_id: ZooId
    builder: Builder
    network: str
    pretrained: bool
    weights_key: str | None = None
    weights_sha256: str | None = None
    num_classes: int = Field(ge=1)
    in_chans: int = Field(ge=1, le=4)


class Lineage(Strict):
    """Where a retrained model comes from: kept in the spec and the model card."""

    base_task_id: Identifier
    base_dataset_id: Identifier
    base_dataset_sha256: str
    base_weights_sha256: str


class Placement(Strict):
    """The resources a task was placed with (handlers/enrich/placement.py)."""

    gpus: int = Field(1, ge=0, le=64)
    """Training processes: GPUs on a GPU pool, gloo processes on a CPU pool; 0 or 1 is
    one process, N > 1 is DDP over N. (A spec from before pools says the request's.)"""
    gpu_memory_gb: float | None = None
    """The memory the request asked each GPU to have, if it asked."""


class TrainingSpec(Strict):
    task_id: Identifier
    tenant: Identifier
    name: str
    description: str = ""
    flow: Flow
    task_type: TaskType
    dataset: DatasetSnapshot
    classes: list[str] = Field(min_length=1)
    label_mode: LabelMode
    preprocessing: Preprocessing
    model: ModelSpec
    hyperparameters: Hyperparameters
    resources: Placement
    pool: Identifier | None = None
    """The runner pool it is dispatched to (``dispatch.<pool>.<task_id>``); ``None`` in a
    spec written before pools (the dispatcher then sends it to the first pool of its
    catalog)."""
    preset: Identifier | None = None
    lineage: Lineage | None = None
    class_map: dict[str, str | None] = Field(default_factory=dict)
    """Dataset label name -> task class, or ``None`` for a label that is dropped (RSNA's
    derived ``any``). Labels absent from the map are taken as they are. Lets a preset
    train on a dataset whose label names differ from the preset's classes."""
    metrics: list[str] = Field(default_factory=list)
    """Extra metrics a preset reports beyond the defaults (``weighted_log_loss``,
    ``auc_any``); see runner/metrics.py."""
    reasons: dict[str, str] = Field(default_factory=dict)
    """Why each automatic choice was made, keyed by the field it chose."""
