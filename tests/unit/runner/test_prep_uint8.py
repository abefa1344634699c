"""runner/prep_uint8.py: the lookup-table windowing gives the cache exactly the pixels the
per-pixel 8-bit path gives, and declines what it does not fit."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.transforms import ImageArray, Stored, preprocess_uint8
from runner.prep_uint8 import lut_uint8, resize_torch
from schemas.spec import Preprocessing, Window

BRAIN = Window(name="brain", center=40, width=80)
SUBDURAL = Window(name="subdural", center=80, width=200)
BONE = Window(name="bone", center=600, width=2800)


def _prep(size: int, channels: int, windows: list[Window]) -> Preprocessing:
    return Preprocessing(image_size=size, channels=channels, windows=windows, mean=[0.5],
                         std=[0.5])


def _ct(shape: tuple[int, int], photometric: str = "MONOCHROME2", slope: float | None = 1.0,
        intercept: float | None = -1024.0, dtype: str = "int16", seed: int = 0,
        spread: float = 60.0) -> ImageArray:
    rng = np.random.default_rng(seed)
    values = np.clip(rng.normal(1060, spread, shape), 0, 4095).astype(dtype)
    stored = Stored(values, slope, intercept)
    return ImageArray(stored.physical(values), "CT", photometric, stored)


@pytest.mark.parametrize("windows", [[], [BRAIN], [BRAIN, SUBDURAL], [BRAIN, SUBDURAL, BONE],
                                     [BRAIN, SUBDURAL, BONE, BRAIN]])
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("size", [32, 45, 64, 200])
def test_the_table_gives_the_per_pixel_paths_pixels(windows: list[Window], channels: int,
                                                    size: int) -> None:
    prep = _prep(size, channels, windows)
    for image in (_ct((256, 256), spread=400), _ct((100, 140), "MONOCHROME1", seed=1),
                  _ct((150, 90), slope=0.5, intercept=None, dtype="uint16", seed=2),
                  _ct((64, 64), slope=None, intercept=None, seed=3)):
        fast = lut_uint8(image, prep)
        if len(windows) == 3 and channels == 1:
            assert fast is None  # luminance of three windows: the float path
            continue
        assert fast is not None
        ref = preprocess_uint8(image, prep, resize=resize_torch)
        assert fast.dtype == np.uint8 and fast.shape == ref.shape == (channels, size, size)
        np.testing.assert_array_equal(fast, ref)


def test_what_the_table_does_not_fit_takes_the_per_pixel_path() -> None:
    prep = _prep(32, 3, [BRAIN])
    image = _ct((64, 64))
    assert lut_uint8(image, prep) is not None
    no_stored = ImageArray(image.pixels, "CT", "MONOCHROME2")
    wide = _ct((16, 16))  # 256 pixels, some hundred distinct values: no saving
    frames = ImageArray(np.stack([image.pixels] * 3), "CT", "MONOCHROME2",
                        Stored(np.stack([image.stored.values] * 3)))  # type: ignore[union-attr]
    rgb = ImageArray(np.zeros((8, 8, 3), np.float32), "OT", "RGB")
    for other in (no_stored, wide, frames, rgb):
        assert lut_uint8(other, prep) is None
    assert lut_uint8(image, _prep(32, 3, [BRAIN] * 5)) is None  # five windows
