"""Series-aware DICOM: which slices belong together, and in which order.

A CT or MR acquisition is a series of slices (or one multi-frame file). The
file name and InstanceNumber are not the anatomical order: scanners number
slices head-first or feet-first, renumber reconstructions, and anonymisers
rename files. The order that holds is the slice position along the normal of
the slice plane: ``ImagePositionPatient`` projected on the cross product of
the two direction cosines in ``ImageOrientationPatient`` (DICOM PS3.3
C.7.6.2.1.1), as dicom2nifti, MONAI and the RSNA winning solutions sort.
When the geometry is missing the order falls back to InstanceNumber, then
to the file name, and the result says which one it used and why.

Pure functions over header values: no pixel decoding, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

OrderedBy = Literal["position", "instance_number", "file_name", "frames"]
T = TypeVar("T")

_STUDY, _SERIES, _SOP = 0x0020000D, 0x0020000E, 0x00080018
_INSTANCE, _POSITION, _ORIENTATION = 0x00200013, 0x00200032, 0x00200037
_BODY_PART, _STUDY_DESC, _SERIES_DESC = 0x00180015, 0x00081030, 0x0008103E
_PER_FRAME, _SHARED = 0x52009230, 0x52009229
_PLANE_POSITION, _PLANE_ORIENTATION = 0x00209113, 0x00209116


@dataclass(frozen=True)
class SliceGeometry:
    """The header values that place one image in its study, series and space."""

    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    instance_number: int | None = None
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, float, float, float, float, float] | None = None
    body_part: str | None = None
    study_description: str | None = None
    series_description: str | None = None
    frame_positions: tuple[tuple[float, float, float], ...] | None = None
    """Per-frame ImagePositionPatient of an enhanced multi-frame image, if it has them."""

    @property
    def series_key(self) -> tuple[str, str] | None:
        if self.study_uid and self.series_uid:
            return self.study_uid, self.series_uid
        return None


def _value(ds: Any, tag: int) -> Any:
    elem = ds.get(tag) if ds is not None else None
    return None if elem is None or elem.value in (None, "") else elem.value


def _text(ds: Any, tag: int) -> str | None:
    value = _value(ds, tag)
    return str(value).strip() or None if value is not None else None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _first_item(ds: Any, tag: int) -> Any:
    seq = _value(ds, tag)
    return seq[0] if seq else None


def geometry_of(ds: Any) -> SliceGeometry:
    """The geometry of a pydicom dataset; malformed values become None, never an error."""
    try:
        instance = int(_value(ds, _INSTANCE)) if _value(ds, _INSTANCE) is not None else None
    except (TypeError, ValueError):
        instance = None
    position = _floats(_value(ds, _POSITION), 3)
    orientation = _floats(_value(ds, _ORIENTATION), 6)
    frames = None
    try:
        if orientation is None:
            shared = _first_item(_first_item(ds, _SHARED), _PLANE_ORIENTATION)
            orientation = _floats(_value(shared, _ORIENTATION), 6)
        per_frame = _value(ds, _PER_FRAME)
        if per_frame:
            found = [_floats(_value(_first_item(item, _PLANE_POSITION), _POSITION), 3)
                     for item in per_frame]
            if all(f is not None for f in found):
                frames = tuple(found)
    except Exception:  # a malformed functional group must not make the image unreadable
        frames = None
    return SliceGeometry(
        study_uid=_text(ds, _STUDY), series_uid=_text(ds, _SERIES), sop_uid=_text(ds, _SOP),
        instance_number=instance, position=position,  # type: ignore[arg-type]
        orientation=orientation,  # type: ignore[arg-type]
        body_part=_text(ds, _BODY_PART), study_description=_text(ds, _STUDY_DESC),
        series_description=_text(ds, _SERIES_DESC),
        frame_positions=frames,  # type: ignore[arg-type]
    )


def slice_normal(orientation: Sequence[float]) -> np.ndarray | None:
    """Unit normal of the slice plane: row cosines x column cosines; None if degenerate."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    return normal / norm if norm > 1e-6 else None


@dataclass(frozen=True)
class Ordering:
    """A permutation of a series' slices and how it was found."""

    order: list[int]
    """Indices into the input, first slice first."""
    by: OrderedBy
    positions: list[float] | None = None
    """Position of each slice along the normal (mm), in ``order``; None without geometry."""
    note: str | None = None
    """Why the order fell back from ``position``, for the import report."""


def order_slices(geometries: Sequence[SliceGeometry], names: Sequence[str]) -> Ordering:
    """Order one series' slices along the slice normal; fall back and say so."""
    n = len(geometries)
    ref = next((g.orientation for g in geometries if g.orientation is not None), None)
    normal = slice_normal(ref) if ref is not None else None
    missing = sum(1 for g in geometries if g.position is None or g.orientation is None)
    if normal is not None and missing == 0:
        dist = [float(np.dot(np.asarray(g.position), normal)) for g in geometries]  # type: ignore[arg-type]
        if len(set(np.round(dist, 3))) == n or n == 1:
            order = sorted(range(n), key=lambda i: (dist[i], geometries[i].instance_number or 0,
                                                    names[i]))
            return Ordering(order, "position", [dist[i] for i in order])
        why = "several slices share one ImagePositionPatient"
    elif normal is None:
        why = "no usable ImageOrientationPatient"
    else:
        why = f"ImagePositionPatient/ImageOrientationPatient missing on {missing} of {n} slices"
    if all(g.instance_number is not None for g in geometries):
        order = sorted(range(n), key=lambda i: (geometries[i].instance_number, names[i]))
        return Ordering(order, "instance_number", note=f"{why}: ordered by InstanceNumber")
    order = sorted(range(n), key=lambda i: names[i])
    return Ordering(order, "file_name", note=f"{why} and InstanceNumber missing: ordered by "
                    "file name")


def order_frames(geometry: SliceGeometry, frames: int) -> Ordering:
    """The frames of one multi-frame image: by per-frame position if given, else as stored."""
    normal = slice_normal(geometry.orientation) if geometry.orientation else None
    fp = geometry.frame_positions
    if normal is not None and fp is not None and len(fp) == frames:
        dist = [float(np.dot(np.asarray(p), normal)) for p in fp]
        order = sorted(range(frames), key=lambda i: (dist[i], i))
        return Ordering(order, "position", [dist[i] for i in order])
    return Ordering(list(range(frames)), "frames",
                    note=None if frames == 1 else "no per-frame positions: frames as stored")


def group_series(items: Sequence[T], key: Callable[[T], tuple[str, str] | None]
                 ) -> tuple[dict[tuple[str, str], list[int]], list[int]]:
    """(study, series) -> indices of ``items`` in it, and the indices without both UIDs."""
    groups: dict[tuple[str, str], list[int]] = {}
    loose: list[int] = []
    for i, item in enumerate(items):
        k = key(item)
        if k is None:
            loose.append(i)
        else:
            groups.setdefault(k, []).append(i)
    return groups, loose


def neighbours(index: int, count: int, offsets: Sequence[int] = (-1, 0, 1)) -> list[int]:
    """Indices of the slices at ``offsets`` from ``index``, clamped to the series' ends
    (the first slice's "previous" is itself, as 2.5D pipelines pad by repetition)."""
    return [min(max(index + o, 0), count - 1) for o in offsets]


# --- body part -------------------------------------------------------------------

Region = Literal["head", "chest", "abdomen"]
REGION_WORDS: dict[str, tuple[str, ...]] = {
    "head": ("HEAD", "BRAIN", "SKULL", "CRANI", "CEREBR", "NEURO", "STROKE"),
    "chest": ("CHEST", "THORAX", "THORAC", "LUNG", "PULMON", "CTPA", "EMBOL"),
    "abdomen": ("ABDOMEN", "ABDO", "ABD ", "PELVIS", "LIVER", "RENAL", "KIDNEY"),
}
"""Words of BodyPartExamined (PS3.16 CID 4031 code meanings) and free-text study and
series descriptions that name one region; matched on upper-cased text."""


def region_of_text(text: str | None) -> Region | None:
    """The one region a text names; None when it names none or several (``CHEST ABD``)."""
    if not text:
        return None
    upper = f" {text.upper().replace('_', ' ')} "
    hits = {r for r, words in REGION_WORDS.items() if any(w in upper for w in words)}
    return hits.pop() if len(hits) == 1 else None  # type: ignore[return-value]


def body_region(geometry: SliceGeometry) -> Region | None:
    """BodyPartExamined first (a coded value), then the study and series descriptions."""
    for text in (geometry.body_part, geometry.study_description, geometry.series_description):
        region = region_of_text(text)
        if region is not None:
            return region
    return None
