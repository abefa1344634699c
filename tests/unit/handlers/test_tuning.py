"""Tuning: auto derives the whole set; manual is bounded, unknown fields are 422s naming them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.errors import from_validation
from handlers.catalog.zoo import get_entry
from handlers.enrich import Rejected, WeightsRef, enrich
from handlers.tuning import auto_hyperparameters, check, manual_hyperparameters
from schemas.tasks import (
    DataType,
    Hyperparameters,
    ManualTuningParams,
    Preference,
    TaskRequest,
)
from tests.support.factories import dataset, request

RESNET = get_entry("resnet18")
VIT = get_entry("vit_small_patch16_224")


class AllMirrored:
    def find(self, entry_id: str) -> WeightsRef | None:
        return WeightsRef(f"zoo/weights/{entry_id}.safetensors", "e" * 64)


def auto(n: int, entry: Any = RESNET, **kw: Any) -> Hyperparameters:
    kw.setdefault("label_mode", "single_label")
    kw.setdefault("pretrained", True)
    return auto_hyperparameters(entry=entry, num_cases=n, **kw)[0]


def test_about_100_cases_train_gently_with_strong_augmentation() -> None:
    small, large = auto(100), auto(20_000)
    assert small.learning_rate < large.learning_rate
    assert small.augmentation == "strong" and large.augmentation == "light"
    assert small.epochs > large.epochs and small.freeze_backbone_epochs > 0
    assert small.batch_size <= 100 // 8 and large.batch_size >= small.batch_size
    assert auto(100, pretrained=False).learning_rate > small.learning_rate


def test_preference_and_entry_shape_the_recipe() -> None:
    fastest = auto(1000, preference=Preference(goal="fastest", target="cpu"))
    accurate = auto(1000, preference=Preference(goal="most_accurate", target="gpu"))
    assert fastest.epochs < accurate.epochs
    assert not fastest.mixed_precision and accurate.mixed_precision
    vit = auto(1000, VIT)
    assert vit.image_size == VIT.input_size == 224 and vit.weight_decay == 0.05
    assert vit.learning_rate < auto(1000).learning_rate
    data = DataType(image_size=600)
    assert auto(1000, data=data, preference=Preference(target="gpu")).image_size == 512
    assert auto(1000, label_mode="multi_label").loss == "bce"


def test_a_preset_recipe_wins() -> None:
    hp, reason = auto_hyperparameters(entry=RESNET, num_cases=100, label_mode="single_label",
                                      pretrained=True, preset={"epochs": 7, "seed": 3})
    assert hp.epochs == 7 and hp.seed == 3 and "preset sets epochs, seed" in reason


def test_manual_fills_the_rest_and_is_checked_against_the_network() -> None:
    hp, reason = manual_hyperparameters(ManualTuningParams(epochs=3), VIT, "multi_label")
    assert hp.epochs == 3 and hp.image_size == 224 and hp.loss == "bce"
    assert "epochs set" in reason
    bad = Hyperparameters(epochs=3, warmup_epochs=3, freeze_backbone_epochs=5, image_size=256,
                          loss="cross_entropy", learning_rate=0.5)
    fields = {e.field for e in check(bad, VIT, "multi_label")}
    assert fields == {f"tuning.hyperparameters.{f}" for f in (
        "warmup_epochs", "freeze_backbone_epochs", "image_size", "loss", "learning_rate")}
    unet = get_entry("unet_resnet18")
    assert [e.field for e in check(Hyperparameters(image_size=250), unet, "masks")] == [
        "tuning.hyperparameters.image_size"]


@pytest.mark.parametrize(("params", "field"), [
    ({"epoch": 3}, "tuning.manual.hyperparameters.epoch"),
    ({"epochs": 0}, "tuning.manual.hyperparameters.epochs"),
    ({"learning_rate": 2.0}, "tuning.manual.hyperparameters.learning_rate"),
    ({"batch_size": 4096}, "tuning.manual.hyperparameters.batch_size"),
    ({"optimizer": "rmsprop"}, "tuning.manual.hyperparameters.optimizer"),
    ({"image_size": 8}, "tuning.manual.hyperparameters.image_size"),
    ({"augmentation": "extreme"}, "tuning.manual.hyperparameters.augmentation"),
])
def test_unknown_or_out_of_bounds_field_is_a_422_naming_it(params: dict[str, Any],
                                                          field: str) -> None:
    body = {"name": "x", "flow": "general", "task_type": "classification", "dataset_id": "d",
            "tuning": {"mode": "manual", "hyperparameters": params}}
    with pytest.raises(ValidationError) as exc:
        TaskRequest.model_validate(body)
    api = from_validation(exc.value)
    assert api.status == 422 and [d.field for d in api.details] == [field]


def test_manual_accepts_the_full_design_set() -> None:
    full = {"optimizer": "sgd", "learning_rate": 0.05, "schedule": "constant",
            "warmup_epochs": 1, "batch_size": 8, "epochs": 4, "weight_decay": 0.001,
            "image_size": 128, "augmentation": "none", "loss": "cross_entropy",
            "class_weighting": "balanced", "early_stopping_patience": 2,
            "freeze_backbone_epochs": 1, "mixed_precision": False, "grad_clip_norm": 5.0,
            "seed": 42}
    assert set(full) == set(Hyperparameters.model_fields)
    spec = enrich(request(tuning={"mode": "manual", "hyperparameters": full}), dataset(),
                  AllMirrored())
    assert spec.hyperparameters.model_dump() == full


def test_ready_spec_carries_the_complete_set_and_agreeing_sizes() -> None:
    for tuning in ({"mode": "auto"}, {"mode": "manual", "hyperparameters": {"epochs": 2}}):
        spec = enrich(request(model={"mode": "auto", "data_type": {"image_size": 300}},
                              tuning=tuning), dataset(), AllMirrored())
        wire = json.loads(spec.model_dump_json())["hyperparameters"]  # task.ready's payload
        assert set(wire) == set(Hyperparameters.model_fields) and None not in wire.values()
        assert spec.preprocessing.image_size == spec.hyperparameters.image_size
        assert spec.reasons["hyperparameters"].startswith(tuning["mode"])
        assert "model" in spec.reasons and "model.ranking" in spec.reasons


def test_enrich_rejects_bad_combinations_with_the_field() -> None:
    req = request(model={"mode": "manual", "network": "vit_small_patch16_224",
                         "pretrained": False},
                  tuning={"mode": "manual", "hyperparameters": {"image_size": 256}})
    with pytest.raises(Rejected) as exc:
        enrich(req, dataset(), AllMirrored())
    assert [(e.field, e.code) for e in exc.value.errors] == [
        ("tuning.hyperparameters.image_size", "out_of_bounds")]


def test_auto_select_walks_down_to_mirrored_weights_and_says_so() -> None:
    class OnlyLite0:
        def find(self, entry_id: str) -> WeightsRef | None:
            ok = entry_id == "efficientnet_lite0.wheel_in1k"
            return WeightsRef(f"zoo/weights/{entry_id}.safetensors", "f" * 64) if ok else None

    spec = enrich(request(model={"mode": "auto"}), dataset(), OnlyLite0())
    assert spec.model.entry_id == "efficientnet_lite0.wheel_in1k"
    assert "have no mirrored weights" in spec.reasons["model"]
    assert "radtrain zoo mirror" in spec.reasons["model"]
    with pytest.raises(Rejected) as exc:
        enrich(request(model={"mode": "auto"}), dataset(), type("Nothing", (), {
            "find": lambda self, entry_id: None})())
    (err,) = exc.value.errors
    assert err.code == "weights_missing" and "radtrain zoo mirror" in err.message


def test_dataset_fills_what_the_data_type_leaves_out() -> None:
    spec = enrich(request(model={"mode": "auto", "data_type": {"image_size": 512}}),
                  dataset(num_cases=120, modality="CT"), AllMirrored())
    assert "120 CT cases at 512 px" in spec.reasons["model.ranking"]
