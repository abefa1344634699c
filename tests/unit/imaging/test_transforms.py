"""Pixel transforms on hand-made values: windowing, inversion, size, channels."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.transforms import (
    ImageArray,
    intensity_channels,
    match_channels,
    minmax,
    normalise,
    pad_square,
    preprocess,
    preprocess_uint8,
    resize,
    to_uint8,
    window,
)
from schemas.spec import Preprocessing, Window

BRAIN = Window(name="brain", center=40, width=80)
SUBDURAL = Window(name="subdural", center=80, width=200)
BONE = Window(name="bone", center=600, width=2800)


def _ct(pixels: np.ndarray, photometric: str = "MONOCHROME2") -> ImageArray:
    return ImageArray(pixels=pixels.astype(np.float32), modality="CT", photometric=photometric)


def test_window_maps_known_hu_values() -> None:
    hu = np.array([-1000.0, 0.0, 40.0, 60.0, 80.0, 1000.0])
    out = window(hu, center=40, width=80)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 0.75, 1.0, 1.0])
    assert out.dtype == np.float32


def test_window_rejects_non_positive_width() -> None:
    with pytest.raises(ValueError):
        window(np.zeros(3), 0, 0)


def test_windows_stack_as_channels_in_order() -> None:
    hu = np.full((4, 4), 40.0)
    stack = intensity_channels(_ct(hu), [BRAIN, SUBDURAL, BONE])
    assert stack.shape == (3, 4, 4)
    np.testing.assert_allclose(stack[:, 0, 0], [0.5, 0.3, (40 - (600 - 1400)) / 2800], rtol=1e-6)


def test_no_windows_is_min_max() -> None:
    px = np.array([[10.0, 20.0], [30.0, 50.0]])
    stack = intensity_channels(_ct(px), [])
    np.testing.assert_allclose(stack[0], [[0.0, 0.25], [0.5, 1.0]])


def test_flat_image_min_max_is_zero_not_nan() -> None:
    assert not np.isnan(minmax(np.full((3, 3), 7.0))).any()


def test_monochrome1_is_inverted_with_and_without_windows() -> None:
    px = np.array([[0.0, 100.0]])
    plain = intensity_channels(_ct(px, "MONOCHROME1"), [])
    np.testing.assert_allclose(plain[0], [[1.0, 0.0]])
    windowed = intensity_channels(_ct(np.array([[40.0, 80.0]]), "MONOCHROME1"), [BRAIN])
    np.testing.assert_allclose(windowed[0], [[0.5, 0.0]])


def test_multiframe_uses_middle_frame() -> None:
    frames = np.stack([np.full((2, 2), v) for v in (0.0, 1.0, 2.0)])
    frames[1, 0, 0] = 5.0
    stack = intensity_channels(_ct(frames), [])
    assert stack.shape == (1, 2, 2)
    assert stack[0, 0, 0] == 1.0


def test_colour_keeps_three_channels_and_luminance_to_one() -> None:
    rgb = np.zeros((2, 2, 3), dtype=np.float32)
    rgb[..., 0] = 255.0
    img = ImageArray(pixels=rgb, modality="OT", photometric="RGB")
    stack = intensity_channels(img, [BRAIN])  # windows do not apply to colour
    assert stack.shape == (3, 2, 2)
    np.testing.assert_allclose(stack[:, 0, 0], [1.0, 0.0, 0.0])
    gray = match_channels(stack, 1)
    assert gray.shape == (1, 2, 2)
    assert gray[0, 0, 0] == pytest.approx(0.299)


def test_pad_square_centres_the_image() -> None:
    out = pad_square(np.ones((1, 2, 4), dtype=np.float32))
    assert out.shape == (1, 4, 4)
    assert out[0, 0].sum() == 0 and out[0, 1].sum() == 4 and out[0, 3].sum() == 0


def test_resize_and_channel_repeat() -> None:
    stack = resize(np.random.default_rng(0).random((1, 96, 96), dtype=np.float32), 64)
    assert stack.shape == (1, 64, 64)
    assert 0.0 <= stack.min() and stack.max() <= 1.0
    rep = match_channels(stack, 3)
    assert rep.shape == (3, 64, 64)
    np.testing.assert_array_equal(rep[0], rep[2])


def test_preprocess_end_to_end_shape_and_range() -> None:
    prep = Preprocessing(
        image_size=32, channels=3, windows=[BRAIN, SUBDURAL], mean=(0.5,), std=(0.5,)
    )
    hu = np.random.default_rng(1).normal(40, 30, (50, 70))
    out = preprocess(_ct(hu), prep)
    assert out.shape == (3, 32, 32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0], out[2])  # two windows cycled into three channels
    q = to_uint8(out)
    assert q.dtype == np.uint8 and q.max() <= 255


def test_normalise_per_channel_and_broadcast() -> None:
    x = np.full((3, 2, 2), 0.5, dtype=np.float32)
    np.testing.assert_allclose(normalise(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), 0.0)
    np.testing.assert_allclose(normalise(x, (0.0,), (0.25,)), 2.0)
    with pytest.raises(ValueError):
        normalise(x, (0.1, 0.2), (1.0, 1.0))


def _prep(size: int, channels: int, windows: list[Window]) -> Preprocessing:
    return Preprocessing(image_size=size, channels=channels, windows=windows, mean=(0.5,),
                         std=(0.5,))


@pytest.mark.parametrize("windows", [[], [BRAIN], [BRAIN, SUBDURAL], [BRAIN, SUBDURAL, BONE],
                                     [BRAIN, SUBDURAL, BONE, BRAIN]])
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("size", [16, 32, 45, 80])
def test_the_8_bit_path_is_within_one_level_of_the_float_path(
        windows: list[Window], channels: int, size: int) -> None:
    rng = np.random.default_rng(size)
    for photometric, shape in (("MONOCHROME2", (64, 64)), ("MONOCHROME1", (50, 70)),
                               ("MONOCHROME2", (71, 33))):
        image = _ct(rng.normal(60, 400, shape), photometric)
        prep = _prep(size, channels, windows)
        fast, ref = preprocess_uint8(image, prep), to_uint8(preprocess(image, prep))
        assert fast.dtype == np.uint8 and fast.shape == ref.shape == (channels, size, size)
        diff = np.abs(fast.astype(int) - ref.astype(int))
        assert diff.max() <= 1, (photometric, shape)
        assert diff.mean() < 0.35  # noise is the worst case: ~0.09 on the synthetic CT


def test_the_8_bit_path_keeps_exact_values_and_the_float_path_for_colour() -> None:
    hu = np.repeat(np.array([[-1000.0, 0.0, 40.0, 80.0]]), 4, axis=1).repeat(16, axis=0)
    out = preprocess_uint8(_ct(hu), _prep(16, 1, [BRAIN]))  # brain: 0, 0, 127.5, 255
    np.testing.assert_array_equal(out[0, 0], [0] * 8 + [128] * 4 + [255] * 4)
    flat = preprocess_uint8(_ct(np.full((16, 16), 7.0), "MONOCHROME1"), _prep(16, 1, []))
    assert (flat == 255).all()  # a flat image is 0, inverted
    rgb = ImageArray(np.random.default_rng(0).random((20, 20, 3), np.float32) * 255, "OT",
                     "RGB")
    for channels in (1, 3):
        np.testing.assert_array_equal(preprocess_uint8(rgb, _prep(16, channels, [])),
                                      to_uint8(preprocess(rgb, _prep(16, channels, []))))
    no_width = _prep(16, 1, []).model_copy(
        update={"windows": [Window.model_construct(name="w", center=0.0, width=0.0)]})
    with pytest.raises(ValueError, match="width"):
        preprocess_uint8(_ct(hu), no_width)
