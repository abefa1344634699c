"""The model zoo: network × pretrained weights, as frozen data.

Like timm's registry: entries are data, one lookup function raises a typed
error, and nothing here imports torch, so the gateway can list the zoo.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SpeedClass = Literal["fast", "medium", "slow"]


class ZooEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    task_types: tuple[str, ...]
    builder: Literal["timm"]
    network: str
    weights_tag: str | None
    params_m: float
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    speed: SpeedClass
    licence: str
    source: str


class UnknownZooEntry(KeyError):
    def __init__(self, entry_id: str) -> None:
        super().__init__(entry_id)
        self.entry_id = entry_id

    def __str__(self) -> str:
        return f"unknown zoo entry {self.entry_id!r}; list them with `radtrain zoo list`"


def _timm(network: str, tag: str, params_m: float, size: int, speed: SpeedClass,
          licence: str = "apache-2.0") -> ZooEntry:
    return ZooEntry(
        id=network,
        task_types=("classification",),
        builder="timm",
        network=network,
        weights_tag=tag,
        params_m=params_m,
        input_size=size,
        speed=speed,
        licence=licence,
        source=f"timm/{network}.{tag}",
    )


ENTRIES: tuple[ZooEntry, ...] = (
    _timm("mobilenetv3_small_100", "lamb_in1k", 2.5, 224, "fast"),
    _timm("mobilenetv3_large_100", "ra_in1k", 5.5, 224, "fast"),
    _timm("efficientnet_lite0", "ra_in1k", 4.7, 224, "fast"),
    _timm("resnet10t", "c3_in1k", 5.4, 224, "fast"),
    _timm("resnet18", "a1_in1k", 11.7, 224, "medium"),
    _timm("resnet50", "a1_in1k", 25.6, 224, "medium"),
    _timm("efficientnet_b0", "ra_in1k", 5.3, 224, "medium"),
    _timm("convnext_tiny", "fb_in22k_ft_in1k", 28.6, 224, "slow"),
)

_BY_ID: dict[str, ZooEntry] = {e.id: e for e in ENTRIES}


def get_entry(entry_id: str) -> ZooEntry:
    try:
        return _BY_ID[entry_id]
    except KeyError:
        raise UnknownZooEntry(entry_id) from None


def list_entries(task_type: str | None = None) -> list[ZooEntry]:
    return [e for e in ENTRIES if task_type is None or task_type in e.task_types]


def weights_key(entry_id: str) -> str:
    """Where the offline mirror keeps an entry's pretrained weights in the store."""
    return f"zoo/weights/{entry_id}.safetensors"
