"""Patient-level train/val splitting: no leaks, never empty, deterministic."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from runner.split import DatasetError, assign_splits, encode_labels
from schemas.dataset import Case


def _cases(n: int, per_patient: int = 2, **extra: Any) -> list[Case]:
    return [
        Case(
            case_id=f"c{i:03d}",
            images=[f"cases/c{i:03d}.dcm"],
            labels=["finding" if i % 3 == 0 else "normal"],
            patient_id=f"p{i // per_patient:03d}" if per_patient else None,
            **extra,
        )
        for i in range(n)
    ]


def _split(cases: list[Case]) -> np.ndarray:
    return assign_splits(cases, encode_labels(cases, ["normal", "finding"], "single_label"))


@pytest.mark.parametrize("n,per_patient", [(4, 2), (10, 3), (40, 2), (121, 4), (30, 0)])
def test_no_patient_on_both_sides_and_both_non_empty(n: int, per_patient: int) -> None:
    cases = _cases(n, per_patient)
    split = _split(cases)
    assert (split == "train").any() and (split == "val").any()
    sides: dict[str, set[str]] = {}
    for case, side in zip(cases, split, strict=True):
        sides.setdefault(case.patient_id or case.case_id, set()).add(str(side))
    assert all(len(s) == 1 for s in sides.values())


def test_roughly_eighty_twenty() -> None:
    split = _split(_cases(200, 2))
    assert 0.15 <= (split == "val").mean() <= 0.25


def test_deterministic_and_order_independent() -> None:
    cases = _cases(60, 3)
    first = dict(zip([c.case_id for c in cases], _split(cases), strict=True))
    again = dict(zip([c.case_id for c in cases], _split(cases), strict=True))
    rev = list(reversed(cases))
    reordered = dict(zip([c.case_id for c in rev], _split(rev), strict=True))
    assert first == again == reordered


def test_val_gets_both_classes_when_possible() -> None:
    # Only two patients have the finding; whichever way the hash falls, val must see one.
    cases = [
        Case(
            case_id=f"c{i}",
            images=["cases/x.dcm"],
            labels=["finding" if i < 4 else "normal"],
            patient_id=f"p{i // 2}",
        )
        for i in range(20)
    ]
    split = _split(cases)
    y = np.array([c.labels[0] for c in cases])
    assert set(y[split == "val"]) == {"normal", "finding"}
    assert set(y[split == "train"]) == {"normal", "finding"}


def test_explicit_split_wins_and_pulls_the_patient_along() -> None:
    cases = _cases(20, 2)
    cases[0] = cases[0].model_copy(update={"split": "val"})
    cases[5] = cases[5].model_copy(update={"split": "test"})
    split = _split(cases)
    assert split[0] == split[1] == "val"  # c000 and c001 share patient p000
    assert split[4] == split[5] == "test"


def test_conflicting_explicit_splits_for_one_patient_are_an_error() -> None:
    cases = _cases(10, 2)
    cases[0] = cases[0].model_copy(update={"split": "train"})
    cases[1] = cases[1].model_copy(update={"split": "val"})
    with pytest.raises(DatasetError, match="p000"):
        _split(cases)


def test_single_patient_cannot_be_split() -> None:
    with pytest.raises(DatasetError, match="two patients"):
        _split(_cases(4, per_patient=10))


def test_multi_label_encoding_and_split() -> None:
    classes = ["a", "b", "c"]
    cases = [
        Case(
            case_id=f"c{i}",
            images=["cases/x.png"],
            labels=[classes[i % 3]] if i % 4 else [],
            patient_id=f"p{i}",
        )
        for i in range(30)
    ]
    y = encode_labels(cases, classes, "multi_label")
    assert y.shape == (30, 3) and y.dtype == np.float32
    assert y[0].sum() == 0 and y[1, 1] == 1.0
    split = assign_splits(cases, y)
    for k in range(3):
        assert y[split == "val", k].any()


def test_single_label_needs_exactly_one_known_label() -> None:
    bad = [
        Case(case_id="a", images=["x"], labels=[]),
        Case(case_id="b", images=["x"], labels=["normal", "finding"]),
        Case(case_id="c", images=["x"], labels=["other"]),
    ]
    with pytest.raises(DatasetError) as info:
        encode_labels(bad, ["normal", "finding"], "single_label")
    assert len(info.value.problems) == 3
