"""Every zoo entry builds through the runner's builder; each builder keeps its output contract.

Entries are built on the meta device (no memory, no weights, no download). A
network's build depends only on (builder, network, classes, channels), so
each distinct pair is built once and every entry is checked to map to one.
Weight initialisers are no-ops on meta tensors (they have no values), so they
are skipped while building: that is what keeps 280+ networks under a minute.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from handlers.catalog.zoo import catalog, get_entry
from runner.builders import SegmentationLogits, apply_pretrained_layout, build
from runner.model import ModelError, build_model
from schemas.spec import ModelSpec
from schemas.zoo import ZooEntry

INIT_METHODS = ("normal_", "uniform_", "clamp_", "erfinv_", "mul_", "add_", "zero_", "fill_",
                "exponential_", "copy_", "div_", "sub_", "fmod_", "bernoulli_")


@contextmanager
def values_free_init() -> Iterator[None]:
    """Initialisers return at once for meta tensors; real tensors are untouched."""
    originals = {name: getattr(torch.Tensor, name) for name in INIT_METHODS}

    def skip_on_meta(method):  # type: ignore[no-untyped-def]
        def run(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return self if self.is_meta else method(self, *args, **kwargs)
        return run

    for name, method in originals.items():
        setattr(torch.Tensor, name, skip_on_meta(method))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def spec_for(entry: ZooEntry, classes: int = 3, in_chans: int = 3) -> ModelSpec:
    return ModelSpec(entry_id=entry.id, builder=entry.builder, network=entry.network,
                     pretrained=False, num_classes=classes, in_chans=in_chans)


def distinct(builder: str) -> list[ZooEntry]:
    seen: dict[str, ZooEntry] = {}
    for e in catalog().entries:
        if e.builder == builder:
            seen.setdefault(e.network, e)
    return list(seen.values())


def test_every_entry_maps_to_a_built_network() -> None:
    built = {(e.builder, e.network) for b in ("timm", "timm_unet", "torchvision_detection",
                                               "torchvision_segmentation") for e in distinct(b)}
    assert {(e.builder, e.network) for e in catalog().entries} == built


@pytest.mark.parametrize("builder", ["timm", "timm_unet", "torchvision_detection",
                                     "torchvision_segmentation"])
def test_every_network_builds_on_meta(builder: str) -> None:
    failures = []
    with warnings.catch_warnings(), values_free_init():
        warnings.simplefilter("ignore")
        for entry in distinct(builder):
            try:
                with torch.device("meta"):
                    model = build(spec_for(entry))
                params = sum(p.numel() for p in model.parameters()) / 1e6
                assert params > 0.1 and next(model.parameters()).is_meta
                if builder == "timm":
                    assert model.num_classes == 3
            except Exception as exc:
                failures.append(f"{entry.id}: {type(exc).__name__}: {exc}")
    assert failures == []


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
