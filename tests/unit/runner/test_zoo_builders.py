"""Zoo networks build through the runner's builder; each builder keeps its output contract.

Networks are built on the meta device (no memory, no weights, no download; see
tests/support/meta_build.py). This fast tier builds the smallest network of every
family of every builder; tests/integration/test_zoo_build_all.py builds all of them.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from handlers.catalog.zoo import catalog, get_entry
from runner.builders import SegmentationLogits, apply_pretrained_layout, build
from runner.model import ModelError, build_model
from schemas.zoo import ZooEntry
from tests.support.meta_build import (
    BUILDERS,
    build_failures,
    distinct,
    spec_for,
    values_free_init,
)

FAMILIES = {
    "timm": {"convnext", "deit", "densenet", "efficientnet", "efficientnetv2", "maxvit",
             "mobilenetv3", "regnet", "resnet", "resnext", "swin", "vit"},
    "timm_unet": {"convnext", "densenet", "efficientnet", "efficientnetv2", "mobilenetv3",
                  "regnet", "resnet", "resnext"},
    "torchvision_detection": {"mobilenetv3", "resnet", "resnext", "vgg"},
    "torchvision_segmentation": {"mobilenetv3", "resnet"},
}
"""Backbone families each builder serves, pinned: a family dropped from (or added to) the
catalog must show up here."""


def smallest_per_family(builder: str) -> list[ZooEntry]:
    smallest: dict[str, ZooEntry] = {}
    for e in distinct(builder):
        if e.family not in smallest or e.params_m < smallest[e.family].params_m:
            smallest[e.family] = e
    return list(smallest.values())


def test_every_entry_has_one_of_the_four_builders() -> None:
    assert {e.builder for e in catalog().entries} == set(BUILDERS)
    assert sum(len(distinct(b)) for b in BUILDERS) == len(
        {(e.builder, e.network) for e in catalog().entries})


@pytest.mark.parametrize("builder", BUILDERS)
def test_smallest_network_of_every_family_builds_on_meta(builder: str) -> None:
    sample = smallest_per_family(builder)
    assert {e.family for e in sample} == FAMILIES[builder]
    assert len(sample) == len(FAMILIES[builder])
    assert build_failures(builder, sample) == []


def _cpu(network: str, classes: int, in_chans: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return build_model(spec_for(get_entry(network), classes, in_chans)).eval()


def test_classifier_contract() -> None:
    model = _cpu("resnet10t", 3, in_chans=1)
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 3)


def test_detector_contract_background_included() -> None:
    model = _cpu("fasterrcnn_mobilenet_v3_large_320_fpn", 3)  # 2 classes + background
    images = [torch.rand(3, 96, 128), torch.rand(3, 128, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([2])}]
    model.train()
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg"} <= set(losses)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.inference_mode():
        out = model(images)
    assert len(out) == 2 and {"boxes", "labels", "scores"} <= set(out[0])
    assert model.roi_heads.box_predictor.cls_score.out_features == 3  # type: ignore[union-attr]


@pytest.mark.parametrize("network", ["lraspp_mobilenet_v3_large", "unet_resnet18"])
def test_segmenters_return_logits_at_input_size(network: str) -> None:
    model = _cpu(network, 4)
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 64, 96))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 64, 96)
    if network.startswith("lraspp"):
        assert isinstance(model, SegmentationLogits)


def test_pretrained_detector_layout_is_torchvisions() -> None:
    with torch.device("meta"), values_free_init():
        model = build(spec_for(get_entry("fasterrcnn_resnet50_fpn.coco")))
    apply_pretrained_layout(model, "fasterrcnn_resnet50_fpn", scope="full")
    body = model.backbone.body  # type: ignore[union-attr]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert all(m.eps == 0.0 for m in body.modules() if isinstance(m, FrozenBatchNorm2d))
    frozen = {n.split(".")[0] for n, p in body.named_parameters() if not p.requires_grad}
    trainable = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert frozen == {"conv1", "layer1"} and trainable == {"layer2", "layer3", "layer4"}


def test_builder_errors_are_model_errors() -> None:
    entry = get_entry("resnet18")
    with pytest.raises(ModelError, match="unknown network"):
        build_model(spec_for(entry).model_copy(update={"network": "resnet_nope"}))
    with pytest.raises(ModelError, match="3-channel"):
        build_model(spec_for(get_entry("fcn_resnet50"), in_chans=1))


@pytest.mark.parametrize(("network", "heads"), [
    ("resnet18", ("fc.",)),
    ("fasterrcnn_resnet50_fpn", ("backbone.fpn.", "rpn.", "roi_heads.")),
    ("ssdlite320_mobilenet_v3_large", ("backbone.extra.", "head.")),
    ("unet_resnet18", ("decoder.", "segmentation_head.")),
    ("deeplabv3_resnet50", ("net.classifier.",)),
])
def test_head_prefixes_name_what_sits_on_the_backbone(network: str,
                                                      heads: tuple[str, ...]) -> None:
    """What ``freeze_backbone_epochs`` leaves trainable, for every builder."""
    from runner.model import head_prefixes

    with torch.device("meta"), values_free_init(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(spec_for(get_entry(network)))
    assert head_prefixes(model) == heads
