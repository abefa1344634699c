"""Task request (HTTP body and ``task.requested`` payload) and its parts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from schemas.common import Identifier, Strict, ZooId, is_zoo_id
from schemas.search import (
    NETWORK,
    CategoricalParam,
    Direction,
    Pruner,
    SearchBudget,
    SearchSpace,
    endpoints,
)

Flow = Literal["general", "specialized", "retrain"]
TaskType = Literal["classification", "detection", "segmentation"]
Modality = Literal["CT", "CR", "DX", "MR", "photo", "other"]


class DataType(Strict):
    modality: Modality = "other"
    image_size: int = Field(224, ge=16, le=4096)
    channels: int = Field(3, ge=1, le=4)
    num_cases: int = Field(100, ge=1)


class Preference(Strict):
    goal: Literal["fastest", "balanced", "most_accurate"] = "balanced"
    target: Literal["gpu", "cpu", "edge"] = "gpu"


class AutoModel(Strict):
    mode: Literal["auto"]
    data_type: DataType = DataType()
    preference: Preference = Preference()


class ManualModel(Strict):
    mode: Literal["manual"]
    network: ZooId
    pretrained: bool = True


ModelChoice = Annotated[AutoModel | ManualModel, Field(discriminator="mode")]


class Hyperparameters(Strict):
    """The full, bounded training recipe; every field has a reason to be bounded."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = Field(0, ge=0, le=50)
    batch_size: int = Field(16, ge=1, le=1024)
    epochs: int = Field(10, ge=1, le=1000)
    weight_decay: float = Field(1e-4, ge=0, le=1.0)
    image_size: int = Field(224, ge=32, le=2048)
    augmentation: Literal["none", "light", "strong"] = "light"
    loss: Literal["cross_entropy", "bce"] = "cross_entropy"
    class_weighting: Literal["none", "balanced"] = "none"
    early_stopping_patience: int = Field(0, ge=0, le=100)
    freeze_backbone_epochs: int = Field(0, ge=0, le=100)
    mixed_precision: bool = True
    grad_clip_norm: float = Field(1.0, ge=0, le=100.0)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class ManualTuningParams(Strict):
    """Manual tuning: any subset; unspecified fields take the defaults above, except
    ``image_size`` (the network's input size) and ``loss`` (``bce`` for multi-label).

    Bounds and unknown names are 422s here; combinations that depend on the
    network or the labels (warm-up past the last epoch, a fixed-input network
    at another size) are rejection reasons from the enrich handler."""

    optimizer: Literal["adamw", "sgd"] | None = None
    learning_rate: float | None = Field(None, gt=0, le=1.0)
    schedule: Literal["cosine", "constant"] | None = None
    warmup_epochs: int | None = Field(None, ge=0, le=50)
    batch_size: int | None = Field(None, ge=1, le=1024)
    epochs: int | None = Field(None, ge=1, le=1000)
    weight_decay: float | None = Field(None, ge=0, le=1.0)
    image_size: int | None = Field(None, ge=32, le=2048)
    augmentation: Literal["none", "light", "strong"] | None = None
    loss: Literal["cross_entropy", "bce"] | None = None
    class_weighting: Literal["none", "balanced"] | None = None
    early_stopping_patience: int | None = Field(None, ge=0, le=100)
    freeze_backbone_epochs: int | None = Field(None, ge=0, le=100)
    mixed_precision: bool | None = None
    grad_clip_norm: float | None = Field(None, ge=0, le=100.0)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)


class AutoTuning(Strict):
    mode: Literal["auto"]


class ManualTuning(Strict):
    mode: Literal["manual"]
    hyperparameters: ManualTuningParams = ManualTuningParams()


class SearchTuning(Strict):
    """Hyperparameter search (issue 18): trials are child tasks, the best one is promoted.

    ``hyperparameters``: fixed for every trial (the rest start from the auto recipe);
    ``space``: what the trials vary (omitted: derived from the network and the dataset
    by the enrich handler); ``objective``: the metric to optimise (omitted: the task
    type's main metric), in ``direction`` (omitted: down for a loss, else up). Names
    and bounds are checked here like manual tuning (422); what depends on the flow,
    the network or the labels is a rejection reason from the enrich handler."""

    mode: Literal["search"]
    budget: SearchBudget = SearchBudget()
    space: SearchSpace | None = None
    objective: str | None = Field(None, min_length=1, max_length=64)
    direction: Direction | None = None
    seed: int = Field(0, ge=0, le=2**31 - 1)
    pruner: Pruner = "median"
    hyperparameters: ManualTuningParams = ManualTuningParams()

    @model_validator(mode="after")
    def _space_in_bounds(self) -> SearchTuning:
        fixed = self.hyperparameters.model_dump(exclude_none=True)
        for name, spec in (self.space or {}).items():
            if name == NETWORK:
                bad = [c for c in endpoints(spec) if not isinstance(c, str)
                       or not is_zoo_id(c)]
                if not isinstance(spec, CategoricalParam) or bad:
                    raise ValueError("space.network: a categorical list of zoo entry ids")
                continue
            if name == "seed" or name not in ManualTuningParams.model_fields:
                searchable = sorted(set(ManualTuningParams.model_fields) - {"seed"})
                raise ValueError(f"space.{name}: not a searchable hyperparameter; one of "
                                 f"{', '.join(searchable)} or network")
            if name in fixed:
                raise ValueError(f"space.{name}: also fixed in tuning.hyperparameters; "
                                 "search it or fix it, not both")
            for value in endpoints(spec):
                try:
                    ManualTuningParams.model_validate({name: value})
                except ValueError as exc:
                    first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else exc
                    raise ValueError(f"space.{name}: {value!r} is out of bounds: "
                                     f"{first}") from None
        return self


Tuning = Annotated[AutoTuning | ManualTuning | SearchTuning, Field(discriminator="mode")]


class Resources(Strict):
    """What a task needs of its runner; the enrich handler places it on a runner pool
    (handlers/enrich/placement.py) and rejects what no pool can satisfy.

    ``gpus`` absent: any pool, as the pool runs one task (one GPU of a GPU pool, one
    process of a CPU pool); the first pool of the catalog is taken. ``gpus: 0``: a CPU
    pool. ``gpus: N``: a pool with N GPUs per runner (or a CPU pool that takes GPU
    requests as N gloo processes, such as the embedded stack's); N > 1 trains with DDP.
    """

    gpus: int | None = Field(None, ge=0, le=8)
    gpu_memory_gb: float | None = Field(None, gt=0, le=1024)
    """Memory each GPU must have at least (``gpu-80g`` rather than ``gpu``)."""
    pool: Identifier | None = None
    """Ask for one pool by name; it must still satisfy ``gpus`` and ``gpu_memory_gb``."""


class Evaluation(Strict):
    """How the held-out metrics are reported (issue 15 item 7; runner/confidence.py).

    The operating point of a classifier is chosen on the validation split: the
    threshold that maximises Youden's J (sensitivity + specificity - 1), or, with
    ``target_sensitivity``, the highest threshold whose sensitivity reaches it.
    """

    target_sensitivity: float | None = Field(None, gt=0.0, lt=1.0)
    bootstrap_resamples: int | None = Field(None, ge=0, le=100_000)
    """95 % bootstrap intervals from this many resamples (0: none); unset: the runner's
    setting ``eval_bootstrap_resamples``."""


# --- issue 15 (E1): preprocessing a general-flow request may choose -----------------

SliceContext = Literal["current", "adjacent"]
"""Input channels: ``current``, one channel per window of the case's own slice (the three
windows of the current slice); ``adjacent``, the previous, current and next slice of the
case's series in the first window (2.5D, as the top RSNA 2019/2020 solutions did)."""


class WindowRequest(Strict):
    """An explicit CT window, in HU."""

    name: str = Field(min_length=1, max_length=40)
    center: float = Field(ge=-4096, le=8192)
    width: float = Field(gt=0, le=16384)


class PreprocessingRequest(Strict):
    """What a general-flow request may say about its pixels; the rest stays automatic.

    ``windows``: preset names (``brain``, ``subdural``, ``bone``, ``lung``, ``mediastinal``,
    ``pe``, ``abdomen``, ``liver``; imaging/windows.py) or explicit windows, one channel
    each (1 to 3); checked by the enrich handler. Without it, CT takes the windows of its
    body part (BodyPartExamined / study description); a CT of unknown body part is
    rejected with the choice spelled out, never given head windows silently.
    """

    windows: list[str | WindowRequest] | None = Field(None, min_length=1, max_length=3)
    slices: SliceContext | None = None


class TaskRequest(Strict):
    """``POST /v1/tasks`` body. Flow-specific rules are checked by the enrich handler.

    The shape is validated here (types, bounds, unknown fields); whether a
    field is allowed in a flow needs the catalog, so it is a rejection reason.
    """

    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=4000)
    flow: Flow
    task_type: TaskType | None = None
    preset: Identifier | None = None
    base_task_id: Identifier | None = None
    dataset_id: Identifier
    model: ModelChoice | None = None
    tuning: Tuning = AutoTuning(mode="auto")
    resources: Resources = Resources()
    evaluation: Evaluation = Evaluation()
    preprocessing: PreprocessingRequest | None = None
    """General flow only (issue 15): the CT windows and 2.5D input; presets pin theirs."""

    # The validator below, said in JSON Schema too, so that OpenAPI clients know it.
    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"flow": {"const": "general"}}, "required": ["flow"]},
        "then": {"required": ["task_type"],
                 "properties": {"task_type": {"type": "string"}}},
    })

    @model_validator(mode="after")
    def _general_needs_task_type(self) -> TaskRequest:
        if self.flow == "general" and self.task_type is None:
            raise ValueError("task_type is required for the general flow")
        return self


class TaskRequested(TaskRequest):
    """``task.requested`` payload: the request plus who asked and under which id."""

    task_id: Identifier
    tenant: Identifier
    idempotency_key: str | None = Field(None, max_length=255)
    parent_task_id: Identifier | None = None
    """A search trial's parent (issue 18): set by the search handler on its children."""
    trial: int | None = Field(None, ge=0)
    """A search trial's number under its parent."""
