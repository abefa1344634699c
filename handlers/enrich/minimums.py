"""A preset's data minimums against a dataset (issue 15 item 6).

A preset promises a useful model from about 100 good cases. Under its
recommended minimums the specialized flow still trains (the user may only
have that much) and says so in the task's reasons; below the hard floor it
rejects, because the validation split could not measure anything. Counts
come from the dataset's import statistics (cases with each label), mapped
onto the preset's classes as the spec's ``class_map`` will map them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from handlers.catalog.presets import Preset
from handlers.enrich.contracts import err
from schemas.common import ErrorDetail
from schemas.dataset import DatasetSummary


@dataclass
class Fit:
    """What a dataset lacks: ``errors`` (below a floor) and ``warnings`` (below minimums)."""

    errors: list[ErrorDetail] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    positives: dict[str, int] = field(default_factory=dict)


def preset_positives(ds: DatasetSummary, preset: Preset,
                     mapping: dict[str, str | None]) -> dict[str, int] | None:
    """Cases per preset class (at most: two labels mapped onto one class count twice);
    ``None`` when the dataset has no statistics (registered before they existed)."""
    if ds.stats is None:
        return None
    out = dict.fromkeys(preset.classes, 0)
    for name, count in ds.stats.class_counts.items():
        target = mapping.get(name, name)
        if target in out:
            out[target] += count
    return out


def check_minimums(ds: DatasetSummary, preset: Preset,
                   mapping: dict[str, str | None]) -> Fit:
    m, fit = preset.minimums, Fit()
    what = f"preset {preset.ref}"
    if ds.num_cases < m.floor_cases:
        fit.errors.append(err("dataset_id", "too_few_cases",
                              f"dataset {ds.id!r} has {ds.num_cases} cases; {what} needs at "
                              f"least {m.floor_cases} to train and validate at all "
                              f"({m.cases} recommended)"))
    elif ds.num_cases < m.cases:
        fit.warnings.append(f"{ds.num_cases} cases, under the {m.cases} {what} recommends: "
                            "expect wide confidence intervals")
    positives = preset_positives(ds, preset, mapping)
    if positives is None:
        fit.warnings.append(f"dataset {ds.id!r} has no class statistics: {what}'s minimum "
                            f"of {m.positives_per_class} positives per class was not checked")
        return fit
    fit.positives = positives
    for name, count in positives.items():
        if count < m.floor_positives_per_class:
            fit.errors.append(err("dataset_id", "too_few_positives",
                                  f"class {name!r} has {count} case(s); {what} needs at least "
                                  f"{m.floor_positives_per_class} ({m.positives_per_class} "
                                  "recommended)"))
        elif count == 0:
            fit.warnings.append(f"class {name!r} has no positive case: it trains as "
                                "all-negative and its AUC will be undefined")
        elif count < m.positives_per_class:
            fit.warnings.append(f"class {name!r} has {count} positive case(s), under the "
                                f"{m.positives_per_class} {what} recommends")
    return fit
