"""Detection and segmentation metrics and target geometry, on hand-made values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imaging.reader import CaseReadError
from runner.targets import pack_boxes, read_mask, scale_boxes, unpack_boxes
from runner.tasks.detection import mean_average_precision
from runner.tasks.segmentation import dice_iou
from schemas.dataset import Box


def test_dice_and_iou_count_empty_vs_empty_as_one() -> None:
    truth = torch.zeros(3, 4, 4, dtype=torch.uint8)
    pred = torch.zeros(3, 4, 4, dtype=torch.uint8)
    truth[1, :2, :2] = 1  # image 1: 4 true pixels of class 1
    pred[1, :2, :1] = 1  # 2 predicted, both right
    pred[2, 0, 0] = 1  # image 2: a false positive on an empty truth
    dice, iou = dice_iou(pred, truth, n_classes=2)
    assert dice[0].tolist() == [1.0, 1.0]  # empty vs empty, both classes
    assert dice[1, 0] == pytest.approx(2 * 2 / (2 + 4)) and iou[1, 0] == pytest.approx(2 / 4)
    assert dice[2, 0] == 0.0 and iou[2, 0] == 0.0
    assert dice[:, 1].tolist() == [1.0, 1.0, 1.0]  # class 2 never present nor predicted


def test_map_is_one_for_perfect_boxes_and_known_for_shifted_ones() -> None:
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0], [40.0, 5.0, 60.0, 20.0]])
    labels = torch.tensor([1, 2])
    target = [{"boxes": boxes, "labels": labels}]
    perfect = mean_average_precision(
        [{"boxes": boxes, "labels": labels, "scores": torch.tensor([0.9, 0.8])}], target)
    assert perfect["map_50"] == pytest.approx(1.0) and perfect["map_50_95"] == pytest.approx(1.0)
    # Shifted 2 px down-right: IoU 324/476 = 0.681 (20x20 box) and 234/366 = 0.639 (20x15),
    # so both match at IoU 0.50 and the class APs at 0.50:0.05:0.95 are 4/10 and 3/10.
    shifted = mean_average_precision(
        [{"boxes": boxes + 2, "labels": labels, "scores": torch.tensor([0.9, 0.8])}], target)
    assert shifted["map_50"] == pytest.approx(1.0)
    assert shifted["map_50_95"] == pytest.approx((0.4 + 0.3) / 2)
    # Shifted 8 px: IoU 144/656 = 0.22 and 84/516 = 0.16, no match at any threshold.
    far = mean_average_precision(
        [{"boxes": boxes + 8, "labels": labels, "scores": torch.tensor([0.9, 0.8])}], target)
    assert far["map_50"] == 0.0 and far["map_50_95"] == 0.0
    none = mean_average_precision([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long(),
                                    "scores": torch.zeros(0)}],
                                  [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long()}])
    assert "map_50" not in none  # undefined without any truth: left out, not a fake 0


def test_boxes_follow_the_pad_and_resize_of_their_image() -> None:
    """A 100x50 (h x w) image is padded 25 px left and right to 100x100, then halved."""
    rows = scale_boxes([Box(label="b", x_min=0, y_min=10, x_max=50, y_max=30)], ["a", "b"],
                       (100, 50), 50)
    np.testing.assert_allclose(rows, [[12.5, 5.0, 37.5, 15.0, 2.0]])
    tiny = scale_boxes([Box(label="a", x_min=0, y_min=0, x_max=1, y_max=1)], ["a"], (100, 100), 50)
    assert tiny.shape == (0, 5)  # collapsed below a pixel: dropped, never a zero-area box
    flat, offsets = pack_boxes([rows, tiny, rows])
    assert [len(b) for b in unpack_boxes(flat, offsets)] == [1, 0, 1]


def test_masks_resize_nearest_and_refuse_bad_pngs(tmp_path: Path) -> None:
    mask = np.zeros((40, 20), dtype=np.uint8)
    mask[10:20, 5:15] = 2
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png", (40, 20), 20, 2, "c1")
    assert out.shape == (20, 20) and set(np.unique(out)) == {0, 2}  # no blended indices
    assert out[7, 7] == 2 and out[0, 0] == 0
    with pytest.raises(CaseReadError, match="class index 2"):
        read_mask(tmp_path / "m.png", (40, 20), 20, 1, "c1")
    with pytest.raises(CaseReadError, match="its image"):
        read_mask(tmp_path / "m.png", (20, 20), 20, 2, "c1")
    Image.fromarray(np.zeros((40, 20, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(CaseReadError, match="single-channel"):
        read_mask(tmp_path / "rgb.png", (40, 20), 20, 2, "c1")
