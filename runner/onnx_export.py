"""ONNX export, checked against torch with onnxruntime before it is published.

An exported graph can silently differ from the module (a data-dependent
branch traced one way, an op lowered differently), so the same input goes
through both and the outputs must agree within a stated tolerance:

* logits (classification, segmentation): |ort - torch| <= ATOL + RTOL * |torch|;
* detections: the same number of boxes, labels equal, boxes within
  BOX_ATOL pixels and scores within ATOL + RTOL * |torch|.

The TorchScript-based exporter (``dynamo=False``) is used: it handles
torchvision's detectors, which ``torch.export`` cannot trace (their
post-processing has data-dependent shapes).
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger("radtrain.runner.onnx")
OPSET = 17
ATOL = 1e-4
RTOL = 1e-3
BOX_ATOL = 1e-2
"""Pixels: box regression decodes through exp(), so float32 rounding grows with the box."""


@dataclass(frozen=True)
class OnnxReport:
    """What the parity check measured; goes into metrics.json and the model card."""

    passed: bool
    max_abs_diff: float | None
    """None when there was nothing comparable (export failed, shapes differ)."""
    atol: float
    rtol: float
    opset: int
    outputs: list[str]
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _LogitsOnly(nn.Module):
    """torchvision's segmentation models return a dict; ONNX wants the tensor."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out["out"] if isinstance(out, dict) else out


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path,
                label_mode: str) -> OnnxReport:
    """Export ``model`` to ``path`` and check it; the report says whether it may ship."""
    import onnx
    import onnxruntime as ort

    # A copy: the exporter switches train/eval modes and restores them on the module it
    # was given (a wrapper's restore reaches the inner model), and nothing here may
    # change the weights about to be published.
    model = copy.deepcopy(model).to("cpu").eval()
    example = example.to("cpu").float().contiguous()
    detection = label_mode == "boxes"
    with torch.inference_mode():
        ref = model([example[0]])[0] if detection else _LogitsOnly(model).eval()(example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if detection:
            torch.onnx.export(model, ([example[0]],), str(path), dynamo=False,
                              opset_version=OPSET, input_names=["image"],
                              output_names=["boxes", "labels", "scores"])
        else:
            torch.onnx.export(_LogitsOnly(model).eval(), (example,), str(path), dynamo=False,
                              opset_version=OPSET, input_names=["input"],
                              output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = example[0].numpy() if detection else example.numpy()
    got = session.run(None, {session.get_inputs()[0].name: feed})
    if detection:
        return _compare_detections(got, ref)
    return _compare_logits(got[0], ref.float().numpy())


def _within(got: np.ndarray, want: np.ndarray, atol: float) -> tuple[bool, float]:
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = float(diff.max()) if diff.size else 0.0
    return bool(np.all(diff <= atol + RTOL * np.abs(want))), worst


def _compare_logits(got: np.ndarray, want: np.ndarray) -> OnnxReport:
    if got.shape != want.shape:
        return OnnxReport(False, None, ATOL, RTOL, OPSET, ["logits"],
                          f"shape {got.shape} != {want.shape}")
    ok, worst = _within(got, want, ATOL)
    return OnnxReport(ok, worst, ATOL, RTOL, OPSET, ["logits"],
                      "" if ok else f"max |diff| {worst:.3g} over tolerance")


def _compare_detections(got: list[np.ndarray], ref: dict[str, torch.Tensor]) -> OnnxReport:
    boxes, labels, scores = got
    names = ["boxes", "labels", "scores"]
    if len(boxes) != len(ref["boxes"]):
        return OnnxReport(False, None, ATOL, RTOL, OPSET, names,
                          f"{len(boxes)} detections vs {len(ref['boxes'])} in torch")
    if not np.array_equal(labels, ref["labels"].numpy()):
        return OnnxReport(False, None, ATOL, RTOL, OPSET, names, "labels differ")
    ok_boxes, worst_boxes = _within(boxes, ref["boxes"].numpy(), BOX_ATOL)
    ok_scores, worst_scores = _within(scores, ref["scores"].numpy(), ATOL)
    ok = ok_boxes and ok_scores
    return OnnxReport(ok, max(worst_boxes, worst_scores), ATOL, RTOL, OPSET, names,
                      "" if ok else f"boxes max |diff| {worst_boxes:.3g}, "
                                    f"scores {worst_scores:.3g}")
