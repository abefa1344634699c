"""CT window presets in Hounsfield units: the one list previews, presets and enrichment use.

A window is (center, width): HU in [center - width/2, center + width/2] maps
to [0, 1]. The values are the usual radiology defaults (brain, subdural and
bone for head CT; lung, mediastinal and the pulmonary-embolism window for
CT angiography; soft-tissue abdomen and liver; Radiopaedia "Windowing (CT)"),
so a preview shows what a radiologist and the model see.

``REGION_WINDOWS`` are the three channels the general flow stacks for a CT
whose body part (imaging.series.body_region) is head, chest or abdomen; a CT
of unknown body part gets no default (``windows_for``): the caller must ask.
``auto_display`` is the file's own VOI transform (window or VOI LUT sequence,
with its VOI LUT function), applied by pydicom, for previews.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

import numpy as np
import pydicom
from pydicom.pixels import apply_voi_lut

from imaging.transforms import ImageArray
from schemas.spec import Window

WindowName = Literal["brain", "subdural", "bone", "lung", "mediastinal", "pe", "abdomen",
                     "liver"]
WINDOW_PRESET_NAMES: tuple[str, ...] = get_args(WindowName)

WINDOW_PRESETS: MappingProxyType[str, Window] = MappingProxyType({
    "brain": Window(name="brain", center=40.0, width=80.0),
    "subdural": Window(name="subdural", center=80.0, width=200.0),
    "bone": Window(name="bone", center=600.0, width=2800.0),
    "lung": Window(name="lung", center=-600.0, width=1500.0),
    "mediastinal": Window(name="mediastinal", center=40.0, width=400.0),
    "pe": Window(name="pe", center=100.0, width=700.0),
    "abdomen": Window(name="abdomen", center=50.0, width=400.0),
    "liver": Window(name="liver", center=30.0, width=150.0),
})


class UnknownWindow(KeyError):
    """A window name that is not a preset; the message lists the presets."""


def window_preset(name: str) -> Window:
    try:
        return WINDOW_PRESETS[name]
    except KeyError:
        raise UnknownWindow(f"unknown window {name!r}; one of "
                            f"{', '.join(WINDOW_PRESET_NAMES)}") from None


HEAD_CT_WINDOWS: tuple[Window, ...] = tuple(
    WINDOW_PRESETS[n] for n in ("brain", "subdural", "bone"))
"""The three windows stacked as channels for head CT (the hemorrhage recipe)."""


REGION_WINDOWS: MappingProxyType[str, tuple[Window, ...]] = MappingProxyType({
    "head": HEAD_CT_WINDOWS,
    "chest": tuple(WINDOW_PRESETS[n] for n in ("mediastinal", "lung", "bone")),
    "abdomen": tuple(WINDOW_PRESETS[n] for n in ("abdomen", "liver", "bone")),
})
"""General-flow CT channels by body region (the first is the one 2.5D input uses)."""


def windows_for(region: str | None) -> tuple[Window, ...] | None:
    """The region's windows, or None: an unknown body part has no silent default."""
    return REGION_WINDOWS.get(region) if region else None


def resolve_windows(items: Sequence[str | Window]) -> list[Window]:
    """Preset names and explicit windows of a request -> windows; ``UnknownWindow`` names
    the bad one."""
    return [item if isinstance(item, Window) else window_preset(item) for item in items]


def region_choices() -> str:
    """The choice an unknown CT body part is given, for reports and rejections."""
    return "; ".join(f"{region}: {', '.join(w.name for w in ws)}"
                     for region, ws in REGION_WINDOWS.items())


# --- the file's own VOI transform ("auto") ------------------------------------------


def _voi_range(ds: Any) -> tuple[float, float]:
    """The output range of pydicom's VOI step, as ``apply_voi_lut`` defines it.

    A VOI LUT sequence maps to 0 .. 2**bits - 1 of its descriptor; a window maps to
    the stored value range (signed or not), rescaled when a rescale is present.
    """
    seq = ds.get("VOILUTSequence")
    if seq:
        bits = int(seq[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.get("BitsStored", 16) or 16)
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    lo, hi = (0, 2**bits - 1) if int(ds.get("PixelRepresentation", 0) or 0) == 0 \
        else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return float(min(lo, hi)), float(max(lo, hi))


def has_voi(ds: Any) -> bool:
    """Whether the file carries its own VOI transform (a window or a VOI LUT sequence)."""
    return bool(ds.get("VOILUTSequence")) or (
        "WindowCenter" in ds and "WindowWidth" in ds)


def auto_display(ds: Any, modality_values: np.ndarray) -> np.ndarray:
    """[0, 1] after the file's VOI transform, through ``pydicom.pixels.apply_voi_lut``.

    ``modality_values`` are the pixels after the modality LUT / rescale (what
    ``imaging.reader`` returns). The VOI LUT sequence wins over a window (DICOM's
    and pydicom's default); the window applies its VOI LUT Function (LINEAR,
    LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2-3). Only the first view is used.
    """
    arr = np.asarray(modality_values)
    if ds.get("VOILUTSequence") and not np.issubdtype(arr.dtype, np.integer):
        rounded = np.round(arr)
        arr = rounded.astype(np.int64) if np.array_equal(rounded, arr) else arr
    out = apply_voi_lut(arr, ds, index=0, prefer_lut=True)
    lo, hi = _voi_range(ds)
    if hi <= lo:
        raise ValueError("the VOI output range is empty")
    return np.clip((np.asarray(out, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0
                   ).astype(np.float32)


def auto_pixels(path: Path, image: ImageArray) -> np.ndarray | None:
    """(H, W) [0, 1] of a grayscale DICOM's own VOI transform (its middle frame), or None
    when the file has none (or is not a grayscale DICOM); MONOCHROME1 is inverted."""
    if image.is_colour or image.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if not has_voi(ds):
            return None
        out = auto_display(ds, image.frame())
    except Exception:  # a malformed VOI module: the caller falls back to a preset window
        return None
    return 1.0 - out if image.photometric == "MONOCHROME1" else out
