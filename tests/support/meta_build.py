"""Build zoo networks on the meta device: no memory, no weights, no download.

A network's build depends only on (builder, network, classes, channels), so each
distinct pair is built once. Weight initialisers are no-ops on meta tensors (they
have no values), so they are skipped while building: that keeps hundreds of
networks within a minute. Used by tests/unit/runner/test_zoo_builders.py (a sample)
and tests/integration/test_zoo_build_all.py (every entry).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from handlers.catalog.zoo import catalog
from runner.builders import build
from schemas.spec import ModelSpec
from schemas.zoo import ZooEntry

BUILDERS = ("timm", "timm_unet", "torchvision_detection", "torchvision_segmentation")
INIT_METHODS = ("normal_", "uniform_", "clamp_", "erfinv_", "mul_", "add_", "zero_", "fill_",
                "exponential_", "copy_", "div_", "sub_", "fmod_", "bernoulli_")


@contextmanager
def values_free_init() -> Iterator[None]:
    """Initialisers return at once for meta tensors; real tensors are untouched."""
    originals = {name: getattr(torch.Tensor, name) for name in INIT_METHODS}

    def skip_on_meta(method):  # type: ignore[no-untyped-def]
        def run(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return self if self.is_meta else method(self, *args, **kwargs)
        return run

    for name, method in originals.items():
        setattr(torch.Tensor, name, skip_on_meta(method))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def spec_for(entry: ZooEntry, classes: int = 3, in_chans: int = 3) -> ModelSpec:
    return ModelSpec(entry_id=entry.id, builder=entry.builder, network=entry.network,
                     pretrained=False, num_classes=classes, in_chans=in_chans)


def distinct(builder: str) -> list[ZooEntry]:
    """One entry per distinct network of ``builder``, in catalog order."""
    seen: dict[str, ZooEntry] = {}
    for e in catalog().entries:
        if e.builder == builder:
            seen.setdefault(e.network, e)
    return list(seen.values())


def build_failures(builder: str, entries: Iterable[ZooEntry]) -> list[str]:
    """Build each entry on meta with 3 classes; one line per entry that fails the contract."""
    failures = []
    with warnings.catch_warnings(), values_free_init():
        warnings.simplefilter("ignore")
        for entry in entries:
            try:
                with torch.device("meta"):
                    model = build(spec_for(entry))
                params = sum(p.numel() for p in model.parameters()) / 1e6
                assert params > 0.1 and next(model.parameters()).is_meta
                if builder == "timm":
                    assert model.num_classes == 3
            except Exception as exc:
                failures.append(f"{entry.id}: {type(exc).__name__}: {exc}")
    return failures
