"""TrainingSpec: a fully resolved task, the payload of ``task.ready``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.common import Identifier, Strict, ZooId
from schemas.dataset import AnnotationType
from schemas.search import SearchPlan
from schemas.tasks import Evaluation, Flow, Hyperparameters, Modality, SliceContext, TaskType

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
    slices: SliceContext = "current"
    """``adjacent``: the previous, current and next slice of the case's series (or stack,
    or multi-frame image) as three channels in the first window (2.5D); ``current``: one
    channel per window of the case's own slice. Part of the cache key and so of what a
    preset pins (issue 15)."""


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
    base_preset_ref: str | None = None
    """The base task's ``preset_id@version`` (issue 15 item 8), when it had a preset."""


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
    preset_ref: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}@[0-9]+$")
    """``preset_id@version``: the exact pinned preset a task was enriched with (issue 15)."""
    evaluation: Evaluation = Field(default_factory=Evaluation)
    """Operating point and bootstrap intervals of the held-out metrics (runner/confidence.py)."""
    software: dict[str, str] = Field(default_factory=dict)
    """Package -> version of the runner that trained it (radtrain, torch, torchvision, timm,
    pydicom ...): empty in ``task.ready``, filled in the run's ``spec.json``."""
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
    search: SearchPlan | None = None
    """``tuning.mode == "search"`` (issue 18): this task is a search parent. No runner
    trains it (the dispatcher skips it); the search handler (handlers/search) runs its
    trials as child tasks over ``hyperparameters`` and completes it with the best."""
