"""The model zoo: network × pretrained weights, as frozen data (DESIGN.md §7).

Like timm's registry: entries are data, one lookup raises a typed error, and
nothing here imports torch, so the gateway can list the zoo without the
runner extra. The entries themselves live in ``zoo.json``, generated from
timm and torchvision metadata by ``python -m runner.zoo_generate`` and
checked in, so the catalog a task was enriched against is reviewable in git
and identical on every machine. It is parsed once, on first use, not at import.

Ids follow timm: ``<network>.<weights tag>`` (``resnet50.a1_in1k``). A bare
network name is an alias of its default weights, exactly as
``timm.create_model("resnet50", pretrained=True)`` picks ``a1_in1k``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict

from schemas.zoo import ZooEntry, weights_key, weights_sha256_key

__all__ = ["Catalog", "UnknownZooEntry", "ZooEntry", "catalog", "get_entry", "list_entries",
           "mirror_key", "weights_key", "weights_sha256_key"]


class Catalog(BaseModel):
    """The whole of ``zoo.json``: entries, the bare-name aliases and what generated them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    generated_by: str
    versions: dict[str, str]
    entries: tuple[ZooEntry, ...]
    aliases: dict[str, str]


class UnknownZooEntry(KeyError):
    def __init__(self, entry_id: str) -> None:
        super().__init__(entry_id)
        self.entry_id = entry_id

    def __str__(self) -> str:
        return f"unknown zoo entry {self.entry_id!r}; list them with `radtrain zoo list`"


@cache
def catalog() -> Catalog:
    """Parse ``zoo.json`` once; later calls share the frozen result."""
    text = resources.files("handlers.catalog").joinpath("zoo.json").read_text(encoding="utf-8")
    return Catalog.model_validate(json.loads(text))


@cache
def _by_id() -> dict[str, ZooEntry]:
    return {e.id: e for e in catalog().entries}


def get_entry(entry_id: str) -> ZooEntry:
    """The entry for an id or alias; ``UnknownZooEntry`` otherwise."""
    by_id = _by_id()
    found = by_id.get(entry_id) or by_id.get(catalog().aliases.get(entry_id, ""))
    if found is None:
        raise UnknownZooEntry(entry_id)
    return found


def list_entries(task_type: str | None = None, family: str | None = None,
                 q: str | None = None) -> list[ZooEntry]:
    """Catalog order; ``q`` matches id, network, family and pretraining, case-insensitive."""
    needle = (q or "").strip().lower()
    return [
        e for e in catalog().entries
        if (task_type is None or task_type in e.task_types)
        and (family is None or e.family == family)
        and (not needle or needle in _haystack(e))
    ]


def _haystack(e: ZooEntry) -> str:
    return " ".join((e.id, e.network, e.family, e.pretrained_on, e.builder)).lower()


def families(entries: Iterable[ZooEntry] | None = None) -> list[str]:
    return sorted({e.family for e in (catalog().entries if entries is None else entries)})


def mirror_key(entry: ZooEntry) -> str:
    """The store key holding this entry's weights (shared between entries with one source)."""
    return weights_key(entry.weights_id)
