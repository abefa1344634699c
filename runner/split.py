"""Labels and train/validation splits: pure functions over the manifest's cases.

Splits are by patient, deterministic, and never put one patient on both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from infra.errors import PermanentError
from schemas.dataset import Case

VAL_FRACTION = 0.2


class DatasetError(PermanentError):
    """The dataset as a whole cannot be trained on; ``problems`` lists every cause."""

    def __init__(self, problems: Sequence[str]) -> None:
        shown = "; ".join(problems[:20]) + (
            f"; ... {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        super().__init__("dataset_invalid", shown)
        self.problems = list(problems)



def encode_labels(cases: Sequence[Case], classes: Sequence[str], label_mode: str,
                  class_map: Mapping[str, str | None] | None = None) -> np.ndarray:
    """(N,) class index for single-label, (N, K) multi-hot float32 for multi-label.

    ``class_map`` (the spec's) renames dataset labels onto the task classes
    first; a label mapped to ``None`` is dropped (a preset's derived ``any``).
    """
    if class_map:
        cases = [_mapped(case, class_map) for case in cases]
    index = {c: i for i, c in enumerate(classes)}
    problems: list[str] = []
    for case in cases:
        unknown = sorted(set(case.labels) - index.keys())
        if unknown:
            problems.append(f"{case.case_id}: labels {unknown} are not task classes")
        elif label_mode == "single_label" and len(case.labels) != 1:
            problems.append(f"{case.case_id}: single-label case has {len(case.labels)} labels")
    if problems:
        raise DatasetError(problems)
    if label_mode == "single_label":
        return np.array([index[c.labels[0]] for c in cases], dtype=np.int64)
    y = np.zeros((len(cases), len(classes)), dtype=np.float32)
    for i, case in enumerate(cases):
        y[i, [index[label] for label in case.labels]] = 1.0
    return y


def _mapped(case: Case, class_map: Mapping[str, str | None]) -> Case:
    labels = [class_map.get(label, label) for label in case.labels]
    kept = list(dict.fromkeys(label for label in labels if label is not None))
    return case.model_copy(update={"labels": kept})


def assign_splits(
    cases: Sequence[Case], y: np.ndarray, val_fraction: float = VAL_FRACTION
) -> np.ndarray:
    """'train' / 'val' / 'test' per case, by patient, deterministic, never leaking.

    Explicit ``split`` fields win and pull the patient's other cases along;
    free patients go to val in the order of their id's hash until the quota
    is met, then patients are moved so every class appears in val if it can.
    """
    groups = _groups(cases)
    fixed = _explicit_splits(cases, groups)
    order = sorted(
        (g for g in groups if g not in fixed), key=lambda g: hashlib.sha256(g.encode()).hexdigest()
    )
    held = {g: s for g, s in fixed.items()}
    n_pool = sum(len(groups[g]) for g in groups if held.get(g) != "test")
    target = max(1, round(val_fraction * n_pool))
    n_val = sum(len(groups[g]) for g, s in held.items() if s == "val")
    for g in order:
        held[g] = "val" if n_val < target else "train"
        n_val += len(groups[g]) if held[g] == "val" else 0
    free_val = [g for g in order if held[g] == "val"]
    if not any(s == "train" for s in held.values()) and free_val:
        held[free_val[-1]] = "train"
    _cover_classes(groups, held, order, _class_sets(y))
    split = np.empty(len(cases), dtype="<U5")
    for g, idx in groups.items():
        split[idx] = held[g]
    for side in ("train", "val"):
        if not (split == side).any():
            raise DatasetError(
                [f"no {side} cases: need at least two patients (or explicit splits)"]
            )
    return split


def _groups(cases: Sequence[Case]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        key = f"patient:{case.patient_id}" if case.patient_id else f"case:{case.case_id}"
        groups.setdefault(key, []).append(i)
    return groups


def _explicit_splits(cases: Sequence[Case], groups: dict[str, list[int]]) -> dict[str, str]:
    fixed: dict[str, str] = {}
    problems: list[str] = []
    for g, idx in groups.items():
        chosen = {cases[i].split for i in idx if cases[i].split is not None}
        if len(chosen) > 1:
            problems.append(
                f"{g} has cases in several explicit splits {sorted(s or '' for s in chosen)}"
            )
        elif chosen:
            fixed[g] = str(chosen.pop())
    if problems:
        raise DatasetError(problems)
    return fixed


def _class_sets(y: np.ndarray) -> list[set[int]]:
    if y.ndim == 1:
        return [{int(v)} for v in y]
    return [set(np.flatnonzero(row).tolist()) for row in y]


def _cover_classes(
    groups: dict[str, list[int]], held: dict[str, str], order: list[str], per_case: list[set[int]]
) -> None:
    """Move free train patients to val until val shows every class train can spare."""

    def classes_of(side: str) -> set[int]:
        return {k for g, s in held.items() if s == side for i in groups[g] for k in per_case[i]}

    for k in sorted(set().union(*per_case)):
        if k in classes_of("val"):
            continue
        in_train = classes_of("train")
        for g in order:
            if held[g] != "train" or not any(k in per_case[i] for i in groups[g]):
                continue
            held[g] = "val"
            if classes_of("train") == in_train:
                break
            held[g] = "train"

