"""One constructor per zoo builder; ``runner.model.build_model`` is the only caller.

Everything here builds with random initialisation and never downloads
(``pretrained=False`` / ``weights=None``), so it also works inside
``torch.device("meta")`` for cheap catalog checks; pretrained weights are
loaded afterwards from the verified store mirror (``runner.model``).

Output conventions the training loops rely on:

- ``timm`` (classification): ``model(x)`` → logits ``(N, num_classes)``.
- ``torchvision_detection``: torchvision's own API. Train: ``model(images, targets)``
  → dict of losses; eval: ``model(images)`` → list of dicts with ``boxes``
  (xyxy, input pixels), ``labels`` and ``scores``. ``images`` is a list of
  float ``(3, H, W)`` tensors in [0, 1]: the model resizes and normalises
  internally (its ``transform``), so ``preprocessing.mean/std`` must not be
  applied again. ``num_classes`` includes the background at index 0, so the
  dataset's class ``i`` is label ``i + 1``.
- ``timm_unet`` and ``torchvision_segmentation``: ``model(x)`` → logits
  ``(N, num_classes, H, W)`` at the input resolution (torchvision's dict output
  is unwrapped to ``["out"]``; its auxiliary head is never built). Again
  ``num_classes`` includes the background at index 0, matching the mask PNGs
  (0 background, ``i`` = ``classes[i - 1]``). U-Net inputs must have H and W
  divisible by 32.

``spec.num_classes`` is taken as given: the enrich handler adds the background.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn
from torchvision.models import get_model_builder
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from schemas.spec import ModelSpec

CUSTOM_DETECTOR = re.compile(
    r"^(?P<arch>fasterrcnn|retinanet|fcos)_"
    r"(?P<backbone>resnet18|resnet34|resnet101|resnext50_32x4d|wide_resnet50_2)_fpn$")
_DETECTOR_CLS: dict[str, Callable[..., nn.Module]] = {
    "fasterrcnn": FasterRCNN, "retinanet": RetinaNet, "fcos": FCOS,
}


@dataclass(frozen=True)
class Layout:
    """Where a torchvision network's class head and pretrained backbone live."""

    head: re.Pattern[str]
    """Class-specific layers: re-initialised for a new task, never loaded from the zoo."""
    backbone: str
    """Key prefix of the part that backbone-only (ImageNet) weights cover."""
    frozen_bn: bool = False
    """torchvision trains this detector with FrozenBatchNorm2d in the backbone."""
    trainable_layers: int = 5
    zero_eps_weights: bool = False
    """Legacy COCO weights trained with eps=0 in FrozenBatchNorm2d (torchvision's overwrite_eps)."""


AUX_HEAD = re.compile(r"^aux_classifier\.")
_FPN = "backbone.body."
LAYOUTS: dict[str, Layout] = {
    "fasterrcnn": Layout(re.compile(r"^roi_heads\.box_predictor\."), _FPN, True, 3),
    "fasterrcnn_v2": Layout(re.compile(r"^roi_heads\.box_predictor\."), _FPN, False, 3),
    "retinanet": Layout(re.compile(r"^head\.classification_head\.cls_logits\."), _FPN, True, 3),
    "retinanet_v2": Layout(re.compile(r"^head\.classification_head\.cls_logits\."), _FPN,
                           False, 3),
    "fcos": Layout(re.compile(r"^head\.classification_head\.cls_logits\."), _FPN, True, 3),
    "ssdlite": Layout(re.compile(r"^head\.classification_head\.module_list\.\d+\.1\."),
                      "backbone.features."),
    "ssd": Layout(re.compile(r"^head\.classification_head\."), "backbone.features."),
    "deeplabv3": Layout(re.compile(r"^classifier\.4\."), "backbone."),
    "fcn": Layout(re.compile(r"^classifier\.4\."), "backbone."),
    "lraspp": Layout(re.compile(r"^classifier\.(low|high)_classifier\."), "backbone."),
}


class BuildError(ValueError):
    """The spec names a network its builder cannot make."""


def layout_of(network: str) -> Layout:
    """The torchvision layout of a detection or segmentation network name."""
    arch = network.split("_", 1)[0]
    if arch in ("fasterrcnn", "retinanet") and network.endswith("_v2"):
        arch += "_v2"
    elif arch.startswith("ssdlite"):
        arch = "ssdlite"
    elif arch.startswith("ssd"):
        arch = "ssd"
    if arch not in LAYOUTS:
        raise BuildError(f"no torchvision layout for {network!r}")
    base = LAYOUTS[arch]
    if network in ("fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn"):
        return Layout(base.head, base.backbone, base.frozen_bn, base.trainable_layers, True)
    return base


# ------------------------------------------------------------------ builders


def build_timm(spec: ModelSpec) -> nn.Module:
    return timm.create_model(spec.network, pretrained=False, num_classes=spec.num_classes,
                             in_chans=spec.in_chans)


def build_unet(spec: ModelSpec, encoder_state: dict[str, torch.Tensor] | None = None
               ) -> nn.Module:
    """smp U-Net over timm's ``features_only`` encoder; encoder weights go in through timm.

    timm's own pretrained path (``pretrained_cfg_overlay=dict(state_dict=...)``)
    drops the classifier, adapts the stem to ``in_chans`` and maps the names
    onto the feature wrapper, so the U-Net encoder gets exactly what timm would
    give it; the caller has already checked the state dict against the network.
    """
    import segmentation_models_pytorch as smp  # heavy import, only where needed

    extra: dict[str, Any] = {}
    if encoder_state is not None:
        extra["pretrained_cfg_overlay"] = {"state_dict": encoder_state}
    return smp.Unet(f"tu-{spec.network}", encoder_weights=True if encoder_state else None,
                    in_channels=spec.in_chans, classes=spec.num_classes, **extra)


def build_detector(spec: ModelSpec, weights_backbone: Any = None) -> nn.Module:
    """A torchvision detector with ``spec.num_classes`` (background included).

    ``weights_backbone`` is only for ``radtrain zoo mirror``, which lets
    torchvision fetch and place the ImageNet backbone exactly as it does itself.
    """
    _three_channels(spec)
    custom = CUSTOM_DETECTOR.match(spec.network)
    if custom is None:
        return get_model_builder(spec.network)(
            weights=None, weights_backbone=weights_backbone, num_classes=spec.num_classes)
    arch = custom["arch"]
    trained = weights_backbone is not None
    extra = None if arch == "fasterrcnn" else LastLevelP6P7(256, 256)
    backbone = resnet_fpn_backbone(
        backbone_name=custom["backbone"], weights=weights_backbone,
        norm_layer=FrozenBatchNorm2d if trained else nn.BatchNorm2d,
        trainable_layers=3 if trained else 5,
        returned_layers=None if arch == "fasterrcnn" else [2, 3, 4], extra_blocks=extra)
    return _DETECTOR_CLS[arch](backbone, num_classes=spec.num_classes)


class SegmentationLogits(nn.Module):
    """torchvision segmentation model whose forward returns the ``"out"`` logits tensor."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)["out"]
        return out


def build_segmenter(spec: ModelSpec, weights_backbone: Any = None) -> nn.Module:
    _three_channels(spec)
    net = get_model_builder(spec.network)(
        weights=None, weights_backbone=weights_backbone, num_classes=spec.num_classes,
        aux_loss=False)
    return SegmentationLogits(net)


def _three_channels(spec: ModelSpec) -> None:
    if spec.in_chans != 3:
        raise BuildError(f"{spec.network} takes 3-channel input; got in_chans={spec.in_chans} "
                         "(stack windows or repeat grey levels to 3 channels)")


def build(spec: ModelSpec, encoder_state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Random-init network for the spec (U-Net: with its encoder weights if given)."""
    if spec.builder == "timm":
        return build_timm(spec)
    if spec.builder == "timm_unet":
        return build_unet(spec, encoder_state)
    if spec.builder == "torchvision_detection":
        return build_detector(spec)
    if spec.builder == "torchvision_segmentation":
        return build_segmenter(spec)
    raise BuildError(f"unknown builder {spec.builder!r}")


def backbone_prefix(model: nn.Module) -> str | None:
    """Key prefix of the pretrained feature extractor of a detector or segmenter, if any."""
    if isinstance(model, SegmentationLogits):
        return "net.backbone."
    if hasattr(model, "encoder") and hasattr(model, "segmentation_head"):  # smp U-Net
        return "encoder."
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(model, "transform"):  # torchvision detector
        return "backbone.body." if hasattr(backbone, "body") else "backbone.features."
    return None


def load_target(model: nn.Module) -> nn.Module:
    """The module whose state dict the zoo weights are written for (unwraps segmentation)."""
    return model.net if isinstance(model, SegmentationLogits) else model


# ------------------------------------------------- the pretrained training layout


def apply_pretrained_layout(model: nn.Module, network: str, *, scope: str) -> None:
    """After loading detector weights, train it the way torchvision trains pretrained ones.

    With pretrained weights torchvision freezes the backbone's batch norm
    (FrozenBatchNorm2d, small detection batches ruin BN statistics) and the
    first backbone stages; built with ``weights=None`` it does neither, so the
    loaded model is switched here.
    """
    lay = layout_of(network)
    body = getattr(getattr(model, "backbone", None), "body", None)
    if body is None:
        return
    if lay.frozen_bn:
        eps = 0.0 if lay.zero_eps_weights and scope == "full" else 1e-5
        freeze_batch_norm(body, eps)
    _freeze_stages(body, lay.trainable_layers)


def freeze_batch_norm(module: nn.Module, eps: float = 1e-5) -> None:
    """Replace every BatchNorm2d below ``module`` with FrozenBatchNorm2d holding its statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=eps).to(child.weight.device)
            with torch.no_grad():
                frozen.weight.copy_(child.weight)
                frozen.bias.copy_(child.bias)
                frozen.running_mean.copy_(child.running_mean)  # type: ignore[arg-type]
                frozen.running_var.copy_(child.running_var)  # type: ignore[arg-type]
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child, eps)


def _freeze_stages(body: nn.Module, trainable: int) -> None:
    """torchvision's trainable_backbone_layers: the last ``trainable`` stages learn."""
    names = [n for n, _ in body.named_children()]
    if "layer4" in names:  # ResNet body: conv1, (bn1), layer1..layer4
        train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
        for name, p in body.named_parameters():
            if not any(name.startswith(t) for t in train):
                p.requires_grad_(False)
        return
    blocks = list(body.children())  # MobileNetV3 features
    stages = [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)]
    stages.append(len(blocks) - 1)
    if trainable >= len(stages):
        return
    freeze_before = stages[len(stages) - trainable] if trainable else len(blocks)
    for block in blocks[:freeze_before]:
        for p in block.parameters():
            p.requires_grad_(False)
