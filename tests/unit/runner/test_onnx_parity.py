"""ONNX export parity: onnxruntime and torch agree on the same input within the stated
tolerance (logits: |diff| <= 1e-4 + 1e-3 * |torch|; detection boxes: 1e-2 px, scores as
logits), for a classifier, a U-Net and a detector; and a disagreement is caught."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from runner import onnx_export
from runner.model import build_model
from schemas.spec import ModelSpec


def spec(builder: str, network: str, num_classes: int) -> ModelSpec:
    return ModelSpec(entry_id=network, builder=builder, network=network, pretrained=False,  # type: ignore[arg-type]
                     num_classes=num_classes, in_chans=3)


def test_classifier_and_unet_logits_match(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    for s, mode in ((spec("timm", "mobilenetv3_small_100", 2), "single_label"),
                    (spec("timm_unet", "mobilenetv3_small_100", 3), "masks")):
        model = build_model(s).eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        report = onnx_export.export_onnx(model, x, tmp_path / f"{mode}.onnx", mode)
        assert report.passed, report
        assert report.max_abs_diff is not None and report.max_abs_diff <= onnx_export.ATOL
        assert (report.atol, report.rtol) == (1e-4, 1e-3)
        for k, v in model.state_dict().items():  # exporting never touches the weights
            torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_detector_boxes_labels_scores_match(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(spec("torchvision_detection",
                             "fasterrcnn_mobilenet_v3_large_320_fpn", 3)).eval()
    report = onnx_export.export_onnx(model, torch.rand(1, 3, 64, 64), tmp_path / "d.onnx",
                                     "boxes")
    assert report.passed, report
    assert report.outputs == ["boxes", "labels", "scores"]


def test_a_mismatch_is_reported_not_shipped() -> None:
    want = np.zeros((2, 3), dtype=np.float32)
    bad = onnx_export._compare_logits(want + 1e-2, want)
    assert not bad.passed and "over tolerance" in bad.message
    assert not onnx_export._compare_logits(np.zeros((1, 3), np.float32), want).passed
    assert onnx_export._compare_logits(want + 5e-5, want).passed
