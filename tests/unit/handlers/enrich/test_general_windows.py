"""General-flow CT windows by body part, from the request, and 2.5D (issue 15 items 2, 4)."""

from __future__ import annotations

from typing import Any

import pytest

from handlers.enrich import Rejected, enrich
from tests.support.factories import dataset, request
from tests.unit.handlers.enrich.test_general import FakeWeights, codes


def stats(regions: dict[str, int] | None, series: int = 0) -> dict[str, Any]:
    return {"num_images": 120, "class_counts": {"normal": 60, "finding": 60},
            "positive_rate": {"normal": 0.5, "finding": 0.5}, "patients": 60,
            "cases_without_patient": 0, "splits": {"unassigned": 120},
            "body_regions": regions, "series": series}


def names(spec: Any) -> list[str]:
    return [w.name for w in spec.preprocessing.windows]


@pytest.mark.parametrize(("region", "expected"), [
    ("head", ["brain", "subdural", "bone"]),
    ("chest", ["mediastinal", "lung", "bone"]),
    ("abdomen", ["abdomen", "liver", "bone"]),
])
def test_ct_windows_follow_the_body_region(region: str, expected: list[str]) -> None:
    spec = enrich(request(), dataset(stats=stats({region: 120})), FakeWeights())
    assert names(spec) == expected
    assert region in spec.reasons["preprocessing"]
    assert spec.preprocessing.slices == "current"


@pytest.mark.parametrize("regions", [{"unknown": 120}, {"head": 60, "chest": 60},
                                     {"head": 100, "unknown": 20}])
def test_unknown_or_mixed_ct_body_part_is_a_choice_not_head_windows(
        regions: dict[str, int]) -> None:
    with pytest.raises(Rejected) as exc:
        enrich(request(), dataset(stats=stats(regions)), FakeWeights())
    assert ("preprocessing.windows", "windows_required") in codes(exc)
    message = next(e.message for e in exc.value.errors if e.code == "windows_required")
    assert "head: brain, subdural, bone" in message and "chest: mediastinal" in message


def test_the_request_chooses_windows_by_name_or_value() -> None:
    prep = {"windows": ["lung", {"name": "soft", "center": 50, "width": 350}],
            "slices": "adjacent"}
    spec = enrich(request(preprocessing=prep), dataset(stats=stats({"unknown": 120}, 4)),
                  FakeWeights())
    assert names(spec) == ["lung", "soft"]
    assert spec.preprocessing.windows[1].center == 50.0
    assert spec.preprocessing.slices == "adjacent"
    assert "2.5D" in spec.reasons["preprocessing"] and "4 series" in spec.reasons["preprocessing"]


def test_an_unknown_window_name_is_rejected() -> None:
    with pytest.raises(Rejected) as exc:
        enrich(request(preprocessing={"windows": ["kidney"]}), dataset(), FakeWeights())
    assert ("preprocessing.windows", "unknown_window") in codes(exc)


def test_a_dataset_without_recorded_body_parts_keeps_head_windows_and_says_so() -> None:
    spec = enrich(request(), dataset(), FakeWeights())
    assert names(spec) == ["brain", "subdural", "bone"]
    assert "not recorded" in spec.reasons["preprocessing"]


def test_non_ct_has_no_windows() -> None:
    spec = enrich(request(), dataset(modality="DX"), FakeWeights())
    assert names(spec) == []


def test_a_preset_pins_its_preprocessing() -> None:
    cmd = request(flow="specialized", preset="intracranial-hemorrhage", model=None,
                  task_type=None, preprocessing={"slices": "adjacent"})
    with pytest.raises(Rejected) as exc:
        enrich(cmd, dataset(annotation_type="multi_label"), FakeWeights())
    assert ("preprocessing", "not_allowed") in codes(exc)


def test_a_preset_that_asks_for_adjacent_slices_pins_them(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from handlers.catalog.presets import get_preset
    from handlers.enrich import specialized

    base = get_preset("pneumothorax")
    monkeypatch.setattr(specialized, "get_preset",
                        lambda _id: base.model_copy(update={"slices": "adjacent"}))
    cmd = request(flow="specialized", task_type=None, model=None, preset="pneumothorax",
                  dataset_id="ptx1")
    ds = dataset(id="ptx1", modality="DX", classes=["normal", "pneumothorax"], num_cases=100)
    lite0 = "efficientnet_lite0.wheel_in1k"
    spec = enrich(cmd, ds, FakeWeights({lite0: "a" * 64}))
    assert spec.preprocessing.slices == "adjacent"
    assert base.model_copy(update={"slices": "adjacent"}).checksum() != base.checksum()
