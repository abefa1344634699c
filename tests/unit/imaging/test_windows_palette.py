"""One list of CT windows and one class palette, shared by previews, enrichment and plots."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.palette import PALETTE, class_colour
from imaging.preview import WINDOWS, colour
from imaging.transforms import ImageArray, intensity_channels
from imaging.windows import HEAD_CT_WINDOWS, UnknownWindow, window_preset


def test_presets_hold_the_radiology_defaults() -> None:
    assert (window_preset("brain").center, window_preset("brain").width) == (40.0, 80.0)
    assert (window_preset("lung").center, window_preset("lung").width) == (-600.0, 1500.0)
    assert [w.name for w in HEAD_CT_WINDOWS] == ["brain", "subdural", "bone"]
    assert WINDOWS["pe"] == (100.0, 700.0)  # the preview reads the same table


def test_unknown_window_names_the_presets() -> None:
    with pytest.raises(UnknownWindow,
                       match="brain, subdural, bone, lung, mediastinal, pe, abdomen, liver"):
        window_preset("kidney")


def test_brain_window_maps_known_hu_values() -> None:
    hu = np.array([[0.0, 40.0, 80.0, 1000.0]], dtype=np.float32)
    image = ImageArray(pixels=hu, modality="CT", photometric="MONOCHROME2")
    out = intensity_channels(image, [window_preset("brain")])[0]
    assert out[0].tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0])


def test_palette_is_shared_and_repeats() -> None:
    assert colour(3) == class_colour(3) == PALETTE[3]
    assert class_colour(len(PALETTE)) == class_colour(0) == (255, 64, 64)
