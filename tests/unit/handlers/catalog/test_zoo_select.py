"""Auto-select rankings for a few data types and preferences: sensible, explained, stable."""

from __future__ import annotations

import pytest

from handlers.catalog.select import TRANSFORMERS, rank
from schemas.tasks import DataType, Preference

CT_100 = DataType(modality="CT", image_size=512, channels=3, num_cases=100)
PHOTOS_50K = DataType(modality="photo", image_size=224, num_cases=50_000)


def ids(task: str, data: DataType, goal: str, target: str, n: int = 5) -> list[str]:
    return [r.entry.id for r in rank(task, data, Preference(goal=goal, target=target), limit=n)]


def test_same_input_same_ranking_with_reasons_and_costs() -> None:
    a = rank("classification", CT_100, Preference(), limit=None)
    b = rank("classification", CT_100, Preference(), limit=None)
    assert [(r.entry.id, r.score, r.reason) for r in a] == \
        [(r.entry.id, r.score, r.reason) for r in b]
    scores = [r.score for r in a]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
    top = a[0]
    assert len(a) == 217 and top.entry.id == "convnext_zepto_rms.ra4_e3600_r224_in1k"
    assert "balanced on gpu" in top.reason and "cases" in top.reason
    assert top.cost.params_m == top.entry.params_m and top.cost.relative_speed > 0
    assert len({(r.entry.builder, r.entry.network) for r in a}) == len(a)  # one per network


def test_edge_gets_small_fast_networks() -> None:
    ranked = rank("classification", CT_100, Preference(goal="fastest", target="edge"))
    assert len(ranked) == 10
    for r in ranked:
        assert r.entry.params_m <= 25 and r.cost.relative_speed >= 1
    assert ids("classification", CT_100, "fastest", "edge", 3) == [
        "mobilenetv3_small_075.lamb_in1k", "tf_mobilenetv3_small_075.in1k",
        "mobilenetv3_small_050.lamb_in1k"]


def test_few_cases_avoid_transformers_and_big_networks() -> None:
    ranked = rank("classification", CT_100, Preference(goal="balanced", target="gpu"))
    assert len(ranked) == 10
    for r in ranked:
        assert r.entry.family not in TRANSFORMERS and r.entry.params_m < 30, r.entry.id


def test_more_accuracy_means_more_compute() -> None:
    fast = rank("classification", PHOTOS_50K, Preference(goal="fastest", target="gpu"))[0]
    accurate = rank("classification", PHOTOS_50K,
                    Preference(goal="most_accurate", target="gpu"))[0]
    assert accurate.cost.gmacs > 5 * fast.cost.gmacs
    assert accurate.cost.relative_speed < fast.cost.relative_speed


def test_image_size_follows_the_data_within_the_target_cap() -> None:
    gpu = rank("classification", CT_100, Preference(target="gpu"), limit=None)
    cpu = rank("classification", CT_100, Preference(target="cpu"), limit=None)
    assert {r.cost.train_size for r in gpu if not r.entry.fixed_input_size} == {512}
    assert {r.cost.train_size for r in cpu if not r.entry.fixed_input_size} == {320}


@pytest.mark.parametrize(("goal", "target", "expected"), [
    ("fastest", "edge", "ssdlite320_mobilenet_v3_large.coco"),
    ("most_accurate", "gpu", "fasterrcnn_resnet50_fpn_v2.coco"),
])
def test_detection_rankings(goal: str, target: str, expected: str) -> None:
    assert ids("detection", CT_100, goal, target, 1) == [expected]


def test_detection_prefers_coco_weights_to_backbone_only() -> None:
    ranked = rank("detection", CT_100, Preference(goal="most_accurate"), limit=None,
                  one_per_network=False)
    coco = next(i for i, r in enumerate(ranked) if r.entry.id == "fcos_resnet50_fpn.coco")
    backbone = next(i for i, r in enumerate(ranked) if r.entry.id == "fcos_resnet50_fpn.in1k")
    assert coco < backbone


def test_segmentation_of_ct_favours_unets_with_many_cases() -> None:
    many = DataType(modality="CT", image_size=512, num_cases=20_000)
    top = rank("segmentation", many, Preference(goal="most_accurate"), limit=3)
    assert [r.entry.id for r in top] == ["unet_convnext_nano.in12k_ft_in1k",
                                         "unet_tf_efficientnetv2_s.in21k_ft_in1k",
                                         "unet_convnext_tiny.in12k_ft_in1k"]
    assert all(r.entry.builder == "timm_unet" for r in top)
    assert "U-Net" in top[0].reason
    edge = ids("segmentation", CT_100, "fastest", "edge", 1)
    assert edge == ["lraspp_mobilenet_v3_large.coco_voc"]


def test_unknown_task_type_ranks_nothing() -> None:
    assert rank("captioning", CT_100, Preference()) == []
