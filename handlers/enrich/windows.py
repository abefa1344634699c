"""Which pixels a general-flow task sees (issue 15 item 4): CT windows and 2.5D input.

In order: the request's ``preprocessing.windows``; else, for CT, the windows
of the dataset's body region (head, chest or abdomen, from BodyPartExamined
and the study description, counted at import: ``DatasetStats.body_regions``);
a CT whose body part is unknown or mixed is rejected with the choice spelled
out, never given head windows silently. A dataset registered without its
headers (stats that do not record body parts: older imports, manifests
registered directly) keeps the head-CT windows it always had, and the reason
says so. Presets and retrains pin their own preprocessing: a request that
sets ``preprocessing`` there is rejected.
"""

from __future__ import annotations

from handlers.enrich.contracts import err
from imaging.windows import HEAD_CT_WINDOWS, UnknownWindow, region_choices, windows_for
from imaging.windows import resolve_windows as resolve_names
from schemas.common import ErrorDetail
from schemas.dataset import DatasetSummary
from schemas.spec import Window
from schemas.tasks import PreprocessingRequest, TaskRequested, WindowRequest

__all__ = ["choose_windows", "dataset_region", "pinned_errors"]


def dataset_region(ds: DatasetSummary) -> tuple[bool, str | None]:
    """(recorded, region): the one body region of every case, or None."""
    counts = ds.stats.body_regions if ds.stats is not None else None
    if counts is None:
        return False, None
    regions = [k for k, n in counts.items() if n]
    return True, regions[0] if len(regions) == 1 and regions[0] != "unknown" else None


def _requested(req: PreprocessingRequest) -> tuple[list[Window], list[ErrorDetail]]:
    items = [Window(name=w.name, center=w.center, width=w.width)
             if isinstance(w, WindowRequest) else w for w in req.windows or []]
    try:
        return resolve_names(items), []
    except UnknownWindow as exc:
        return [], [err("preprocessing.windows", "unknown_window", str(exc.args[0]))]


def choose_windows(cmd: TaskRequested, ds: DatasetSummary
                   ) -> tuple[list[Window], list[ErrorDetail], str]:
    """(windows, errors, reason) for a general-flow task on ``ds``."""
    req = cmd.preprocessing
    if req is not None and req.windows:
        windows, errors = _requested(req)
        return windows, errors, f"windows from the request: {_names(windows)}"
    if ds.modality != "CT":
        return [], [], f"{ds.modality}: each image scaled by its own range (no CT windows)"
    recorded, region = dataset_region(ds)
    chosen = windows_for(region)
    if chosen is not None:
        return list(chosen), [], f"{region} CT (BodyPartExamined / study description): " \
                                 f"{_names(chosen)}"
    if not recorded:
        return list(HEAD_CT_WINDOWS), [], (
            f"head-CT windows {_names(HEAD_CT_WINDOWS)}: this dataset's body part was not "
            "recorded (registered without reading its headers); re-import it, or choose "
            f"with preprocessing.windows ({region_choices()})")
    counts = ds.stats.body_regions if ds.stats is not None else {}
    seen = ", ".join(f"{k} {v}" for k, v in (counts or {}).items())
    return [], [err("preprocessing.windows", "windows_required",
                    f"the CT body part is unknown or mixed ({seen} cases): choose the windows "
                    f"with preprocessing.windows ({region_choices()}; or explicit "
                    "{name, center, width} in HU), or use a preset")], ""


def pinned_errors(cmd: TaskRequested, by: str) -> list[ErrorDetail]:
    """A specialized or retrain request may not change the pinned preprocessing."""
    if cmd.preprocessing is None:
        return []
    return [err("preprocessing", "not_allowed",
                f"the preprocessing (windows, slices) is pinned by {by}; remove 'preprocessing'")]


def _names(windows: tuple[Window, ...] | list[Window]) -> str:
    return ", ".join(f"{w.name} {w.center:g}/{w.width:g}" for w in windows)
