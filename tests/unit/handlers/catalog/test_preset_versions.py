"""Versioned presets (issue 15 item 8): what a preset pins has a checksum per version.

A model trained with ``intracranial-hemorrhage@1`` was trained with exactly
what version 1 pinned: classes and label map, modalities, windows, slices,
size, channels, network and recipe. Changing any of it without a new version
would silently make ``@1`` mean two things. So every version's checksum is
recorded here: a change to a preset's pinned content fails this test until
its ``version`` is bumped in presets.json and the new version's checksum is
added below (the old line stays: it documents what the old version was).
Descriptions, minimums and the reported metrics are outside the checksum.
"""

from __future__ import annotations

import pytest

from handlers.catalog.presets import Preset, get_preset, list_presets
from handlers.enrich import WeightsRef, enrich
from schemas.spec import Window
from tests.support.factories import dataset, request

CHECKSUMS = {
    "intracranial-hemorrhage@1":
        "b5b251264aa9d83ada0685eb04508e363e0a5edb9d46857403386f55d13153fb",
    "pneumothorax@1": "16ca74899e577d51862d983c66299f5d5684f88b8cde687049f974a8f27bc7a6",
    "pulmonary-embolism@1": "f7a09bcb3e3205b6616f3a2c6a8268eef8831fe5b1076660863d0cea2ed9d7f2",
}


@pytest.mark.parametrize("preset", list_presets(), ids=lambda p: p.id)
def test_each_preset_version_has_its_recorded_checksum(preset: Preset) -> None:
    assert preset.ref in CHECKSUMS, (
        f"{preset.ref} is a new version: record its checksum {preset.checksum()}")
    assert preset.checksum() == CHECKSUMS[preset.ref], (
        f"{preset.id}'s pinned content changed but it is still version {preset.version}: "
        f"bump it to {preset.version + 1} in presets.json and record "
        f"'{preset.id}@{preset.version + 1}': '{preset.checksum()}' here")


def _changed(preset: Preset, **update: object) -> Preset:
    return Preset.model_validate({**preset.model_dump(), **update})


def test_every_pinned_change_alters_the_checksum_and_descriptions_do_not() -> None:
    ich = get_preset("intracranial-hemorrhage")
    base = ich.checksum()
    windows = [w.model_dump() for w in ich.windows]
    pinned_changes = [
        {"windows": [{**windows[0], "width": 81.0}, *windows[1:]]},
        {"windows": [*windows[:2], Window(name="bone", center=500, width=2800).model_dump()]},
        {"image_size": 480},
        {"channels": 1},
        {"slices": "adjacent"},
        {"zoo_entry": "resnet18.a1_in1k"},
        {"recipe": {**ich.recipe.model_dump(), "learning_rate": 1e-4}},
        {"label_map": {**ich.label_map, "edh2": "epidural"}},
        {"input": "head CT, any kernel"},
    ]
    for update in pinned_changes:
        assert _changed(ich, **update).checksum() != base, update
    for update in ({"name": "ICH"}, {"description": "x"}, {"version": 2},
                   {"minimums": {**ich.minimums.model_dump(), "cases": 200}},
                   {"metrics": ["auc"]}):
        assert _changed(ich, **update).checksum() == base, update


def test_the_spec_names_the_preset_version_in_the_specialized_flow() -> None:
    class Weights:
        def find(self, entry_id: str) -> WeightsRef:
            return WeightsRef(f"zoo/weights/{entry_id}.safetensors", "a" * 64)

    spec = enrich(request(flow="specialized", task_type=None, model=None, preset="pneumothorax"),
                  dataset(modality="DX", classes=["normal", "pneumothorax"]), Weights())
    ptx = get_preset("pneumothorax")
    assert spec.preset == "pneumothorax" and spec.preset_ref == ptx.ref == "pneumothorax@1"
    assert ptx.checksum()[:12] in spec.reasons["preprocessing"]
