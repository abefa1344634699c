"""Every zoo entry builds through the runner's builder (meta device: no memory, no
weights, no download). Needs no server, but builds 280+ networks (about 20 s on two
cores), so it lives here; tests/unit/runner/test_zoo_builders.py builds one per family."""

from __future__ import annotations

import pytest

from handlers.catalog.zoo import catalog
from tests.support.meta_build import BUILDERS, build_failures, distinct

DISTINCT_NETWORKS = {"timm": 217, "timm_unet": 39, "torchvision_detection": 24,
                     "torchvision_segmentation": 6}
"""Distinct networks per builder in the shipped catalog, pinned."""


def test_every_entry_maps_to_one_built_network() -> None:
    assert {b: len(distinct(b)) for b in BUILDERS} == DISTINCT_NETWORKS
    assert {(e.builder, e.network) for e in catalog().entries} == {
        (e.builder, e.network) for b in BUILDERS for e in distinct(b)}


@pytest.mark.parametrize("builder", BUILDERS)
def test_every_network_builds_on_meta(builder: str) -> None:
    entries = distinct(builder)
    assert len(entries) == DISTINCT_NETWORKS[builder]
    assert build_failures(builder, entries) == []
