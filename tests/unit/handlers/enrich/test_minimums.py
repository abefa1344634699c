"""Preset minimums (issue 15 item 6): warn under them, reject only below the hard floor."""

from __future__ import annotations

from typing import Any

import pytest

from handlers.catalog.presets import get_preset, list_presets
from handlers.enrich import Rejected, WeightsRef, enrich
from handlers.enrich.minimums import check_minimums
from tests.support.factories import dataset, request

SUBTYPES = ["subarachnoid", "subdural", "epidural", "intraparenchymal", "intraventricular"]


class Weights:
    def find(self, entry_id: str) -> WeightsRef:
        return WeightsRef(f"zoo/weights/{entry_id}.safetensors", "a" * 64)


def stats(counts: dict[str, int], n: int) -> dict[str, Any]:
    return {"num_images": n, "class_counts": counts,
            "positive_rate": {k: v / n for k, v in counts.items()}, "patients": n // 2,
            "cases_without_patient": 0, "splits": {"unassigned": n}}


def ich(counts: dict[str, int], n: int) -> Any:
    return dataset(id="ich", annotation_type="multi_label", classes=[*counts], num_cases=n,
                   stats=stats(counts, n))


def ptx(counts: dict[str, int], n: int) -> Any:
    return dataset(id="ptx", modality="DX", classes=[*counts], num_cases=n,
                   stats=stats(counts, n))


def specialized(preset: str, ds_id: str) -> Any:
    return request(flow="specialized", task_type=None, model=None, preset=preset,
                   dataset_id=ds_id)


def test_every_preset_declares_minimums_with_floors_below_them() -> None:
    for preset in list_presets():
        m = preset.minimums
        assert m.floor_cases <= m.cases and m.floor_positives_per_class <= m.positives_per_class
    assert get_preset("intracranial-hemorrhage").minimums.floor_positives_per_class == 0


def test_a_realistic_100_case_batch_trains_with_warnings() -> None:
    counts = {"subarachnoid": 5, "subdural": 6, "epidural": 0, "intraparenchymal": 5,
              "intraventricular": 4}
    spec = enrich(specialized("intracranial-hemorrhage", "ich"), ich(counts, 100), Weights())
    why = spec.reasons["dataset"]
    assert why.startswith("warning: ") and "100 cases" not in why  # enough cases
    assert "class 'epidural' has no positive case" in why
    assert "class 'subdural' has 6 positive case(s), under the 10" in why


def test_enough_data_gives_no_warning() -> None:
    counts = dict.fromkeys(SUBTYPES, 12)
    spec = enrich(specialized("intracranial-hemorrhage", "ich"), ich(counts, 150), Weights())
    assert "dataset" not in spec.reasons


def test_few_cases_warn_and_below_the_floor_reject() -> None:
    counts = {"normal": 25, "pneumothorax": 25}
    spec = enrich(specialized("pneumothorax", "ptx"), ptx(counts, 50), Weights())
    assert "50 cases, under the 100 preset pneumothorax@1 recommends" in spec.reasons["dataset"]
    with pytest.raises(Rejected) as exc:
        enrich(specialized("pneumothorax", "ptx"), ptx({"normal": 9, "pneumothorax": 3}, 12),
               Weights())
    codes = {(e.code, e.field) for e in exc.value.errors}
    assert codes == {("too_few_cases", "dataset_id"), ("too_few_positives", "dataset_id")}
    assert any("'ptx' has 3 case(s)" in e.message for e in exc.value.errors)


def test_label_names_are_mapped_before_counting() -> None:
    preset = get_preset("pneumothorax")
    ds = ptx({"no_finding": 80, "pneumothorax": 30}, 110)
    fit = check_minimums(ds, preset, {"no_finding": "normal", "pneumothorax": "ptx"})
    assert fit.positives == {"normal": 80, "ptx": 30} and not fit.errors and not fit.warnings


def test_a_dataset_without_statistics_is_not_refused() -> None:
    fit = check_minimums(dataset(num_cases=120), get_preset("pneumothorax"), {})
    assert not fit.errors and "no class statistics" in fit.warnings[0]
