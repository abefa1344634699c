"""CT window presets in Hounsfield units: the one list previews, presets and enrichment use.

A window is (center, width): HU in [center - width/2, center + width/2] maps
to [0, 1]. The values are the usual radiology defaults (brain, subdural and
bone for head CT; lung, mediastinal and the pulmonary-embolism window for
CT angiography), so a preview shows what a radiologist and the model see.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Literal, get_args

from schemas.spec import Window

WindowName = Literal["brain", "subdural", "bone", "lung", "mediastinal", "pe"]
WINDOW_PRESET_NAMES: tuple[str, ...] = get_args(WindowName)

WINDOW_PRESETS: MappingProxyType[str, Window] = MappingProxyType({
    "brain": Window(name="brain", center=40.0, width=80.0),
    "subdural": Window(name="subdural", center=80.0, width=200.0),
    "bone": Window(name="bone", center=600.0, width=2800.0),
    "lung": Window(name="lung", center=-600.0, width=1500.0),
    "mediastinal": Window(name="mediastinal", center=40.0, width=400.0),
    "pe": Window(name="pe", center=100.0, width=700.0),
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
