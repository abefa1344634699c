"""The specialized and retrain flows' rejections and resolution (handlers/enrich/), pure."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from handlers.catalog.presets import UnknownPreset, get_preset, list_presets, map_label
from handlers.catalog.zoo import get_entry
from handlers.enrich import BaseTask, Rejected, WeightsRef, enrich
from runner.metrics import any_label_metrics, classification_metrics
from runner.split import encode_labels
from schemas.dataset import Case
from schemas.spec import TrainingSpec
from tests.support.factories import SHA, dataset, request

LITE0 = "efficientnet_lite0.wheel_in1k"
BASE_SHA = "b" * 64


class Weights:
    def __init__(self, available: bool = True) -> None:
        self.available = available

    def find(self, entry_id: str) -> WeightsRef | None:
        return WeightsRef(f"zoo/weights/{entry_id}.safetensors", "a" * 64) \
            if self.available else None


def ptx_ds(**over: Any) -> Any:
    body = {"id": "ptx1", "modality": "DX", "classes": ["normal", "pneumothorax"],
            "num_cases": 100}
    return dataset(**{**body, **over})


def ich_ds(**over: Any) -> Any:
    body = {"id": "ich1", "annotation_type": "multi_label", "modality": "CT",
            "classes": ["epidural", "intraparenchymal", "intraventricular", "subarachnoid",
                        "subdural", "any"]}
    return dataset(**{**body, **over})


def special(**over: Any) -> Any:
    body = {"flow": "specialized", "task_type": None, "model": None, "preset": "pneumothorax",
            "dataset_id": "ptx1"}
    return request(**{**body, **over})


def retrain(**over: Any) -> Any:
    body = {"task_id": "t2", "flow": "retrain", "task_type": None, "model": None,
            "base_task_id": "t1", "dataset_id": "ptx2"}
    return request(**{**body, **over})


def codes(exc: pytest.ExceptionInfo[Rejected]) -> set[tuple[str, str]]:
    return {(e.field, e.code) for e in exc.value.errors}


def rejected(cmd: Any, ds: Any, weights: Any = None, base: BaseTask | None = None
             ) -> set[tuple[str, str]]:
    with pytest.raises(Rejected) as exc:
        enrich(cmd, ds, weights or Weights(), base)
    assert all(e.message for e in exc.value.errors)
    return codes(exc)


# --- presets as data -----------------------------------------------------------


def test_presets_pin_existing_zoo_entries_and_the_documented_preprocessing() -> None:
    assert [p.id for p in list_presets()] == ["intracranial-hemorrhage", "pneumothorax",
                                             "pulmonary-embolism"]
    for p in list_presets():
        assert get_entry(p.zoo_entry).id == LITE0 and p.image_size == 512
    ich, ptx, pe = (get_preset(i) for i in ("intracranial-hemorrhage", "pneumothorax",
                                            "pulmonary-embolism"))
    assert [(w.name, w.center, w.width) for w in ich.windows] == [
        ("brain", 40, 80), ("subdural", 80, 200), ("bone", 600, 2800)]
    assert [(w.name, w.center, w.width) for w in pe.windows] == [
        ("pe", 100, 700), ("mediastinal", 40, 400), ("lung", -600, 1500)]
    assert ich.modalities == ("CT",) and pe.modalities == ("CT",)
    assert ptx.modalities == ("CR", "DX") and ptx.windows == ()
    assert len(ich.classes) == 5 and ich.label_mode == "multi_label"
    assert "weighted_log_loss" in ich.metrics and "auc_any" in ich.metrics
    assert {"auc", "sensitivity", "specificity"} <= set(ptx.metrics) & set(pe.metrics)
    with pytest.raises(UnknownPreset, match="pneumothorax"):
        get_preset("nope")


def test_common_label_names_map_onto_preset_classes() -> None:
    ich, ptx, pe = (get_preset(i) for i in ("intracranial-hemorrhage", "pneumothorax",
                                            "pulmonary-embolism"))
    assert map_label(ich, "subdural") == (True, "subdural")
    assert map_label(ich, "any") == (True, None)  # derived, not trained
    assert map_label(ptx, "Pneumothorax") == (True, "ptx") and map_label(ptx, "1")[1] == "ptx"
    assert map_label(pe, "pe_present_on_image") == (True, "pe")
    assert map_label(pe, "positive") == (True, "pe") and map_label(pe, "tumour") == (False, None)


# --- specialized ---------------------------------------------------------------


def test_specialized_resolves_everything_from_the_preset() -> None:
    spec = enrich(special(), ptx_ds(), Weights())
    assert spec.flow == "specialized" and spec.preset == "pneumothorax"
    assert spec.classes == ["normal", "ptx"] and spec.label_mode == "single_label"
    assert spec.class_map == {"pneumothorax": "ptx"}
    assert spec.model.entry_id == LITE0 and spec.model.pretrained
    assert spec.model.weights_sha256 == "a" * 64
    assert spec.preprocessing.image_size == spec.hyperparameters.image_size == 512
    assert spec.preprocessing.windows == []
    hp = spec.hyperparameters
    assert (hp.augmentation, hp.class_weighting, hp.early_stopping_patience) == (
        "strong", "balanced", 6)
    assert spec.metrics == ["auc", "sensitivity", "specificity"]


def test_specialized_hemorrhage_drops_any_and_keeps_the_windows() -> None:
    spec = enrich(special(preset="intracranial-hemorrhage", dataset_id="ich1"), ich_ds(),
                  Weights())
    assert spec.label_mode == "multi_label" and spec.hyperparameters.loss == "bce"
    assert spec.class_map == {"any": None}
    assert [w.name for w in spec.preprocessing.windows] == ["brain", "subdural", "bone"]


def test_specialized_manual_tuning_may_shrink_the_image() -> None:
    cmd = special(tuning={"mode": "manual", "hyperparameters": {"image_size": 64, "epochs": 3}})
    spec = enrich(cmd, ptx_ds(), Weights())
    assert spec.preprocessing.image_size == spec.hyperparameters.image_size == 64
    assert spec.hyperparameters.augmentation == "strong"  # the rest: the preset's recipe


@pytest.mark.parametrize(("over", "ds", "expected"), [
    ({"model": {"mode": "manual", "network": "resnet18"}}, None,
     {("model.network", "not_allowed")}),
    ({"model": {"mode": "auto", "preference": {"goal": "fastest"}}}, None,
     {("model.preference", "not_allowed")}),
    ({"base_task_id": "t0"}, None, {("base_task_id", "not_allowed")}),
    ({"preset": None}, None, {("preset", "preset_required")}),
    ({"preset": "knee-oa"}, None, {("preset", "unknown_preset")}),
    ({"task_type": "detection"}, None, {("task_type", "not_allowed")}),
    ({}, {"modality": "CT"}, {("dataset_id", "modality_mismatch")}),
    ({}, {"annotation_type": "multi_label"}, {("dataset_id", "annotation_mismatch")}),
    ({}, {"classes": ["normal", "pneumothorax", "effusion"]},
     {("dataset_id", "class_mismatch")}),
    ({}, {"classes": ["normal", "atelectasis"]},
     {("dataset_id", "class_mismatch"), ("dataset_id", "class_missing")}),
    ({"dataset_id": "gone"}, "missing", {("dataset_id", "dataset_not_found")}),
    ({}, {"tenant": "other"}, {("dataset_id", "dataset_not_found")}),
])
def test_specialized_rejection_table(over: dict[str, Any], ds: Any,
                                     expected: set[tuple[str, str]]) -> None:
    summary = None if ds == "missing" else ptx_ds(**(ds or {}))
    assert rejected(special(**over), summary) == expected


def test_specialized_without_mirrored_weights_names_the_command() -> None:
    with pytest.raises(Rejected) as exc:
        enrich(special(), ptx_ds(), Weights(available=False))
    assert codes(exc) == {("model.pretrained", "weights_missing")}
    assert f"radtrain zoo mirror {LITE0}" in exc.value.errors[0].message


def test_specialized_lists_every_problem_at_once() -> None:
    cmd = special(model={"mode": "manual", "network": "resnet18"}, base_task_id="t0")
    got = rejected(cmd, ptx_ds(modality="MR", classes=["a", "b"]))
    assert got == {("model.network", "not_allowed"), ("base_task_id", "not_allowed"),
                   ("dataset_id", "modality_mismatch"), ("dataset_id", "class_mismatch"),
                   ("dataset_id", "class_missing")}


# --- retrain -------------------------------------------------------------------


def base_spec(**over: Any) -> TrainingSpec:
    spec = enrich(special(tuning={"mode": "manual", "hyperparameters": {"image_size": 64}}),
                  ptx_ds(), Weights())
    return spec.model_copy(update=over)


def completed(spec: TrainingSpec | None = None, **over: Any) -> BaseTask:
    body: dict[str, Any] = {"task_id": "t1", "tenant": "default", "state": "completed",
                            "spec": spec or base_spec(),
                            "weights_key": "runs/t1/model.safetensors",
                            "weights_sha256": BASE_SHA}
    return BaseTask(**{**body, **over})


def test_retrain_takes_network_classes_preprocessing_and_weights_from_the_base() -> None:
    base = completed()
    assert base.spec is not None
    spec = enrich(retrain(), ptx_ds(id="ptx2", classes=["normal", "ptx"]), Weights(), base)
    assert spec.flow == "retrain" and spec.preset == "pneumothorax"
    assert spec.classes == base.spec.classes and spec.preprocessing == base.spec.preprocessing
    assert spec.model.weights_key == "runs/t1/model.safetensors"
    assert spec.model.weights_sha256 == BASE_SHA and spec.model.pretrained
    assert spec.hyperparameters.image_size == 64
    assert spec.lineage is not None and spec.lineage.model_dump() == {
        "base_task_id": "t1", "base_dataset_id": "ptx1", "base_dataset_sha256": SHA,
        "base_weights_sha256": BASE_SHA, "base_preset_ref": "pneumothorax@1"}
    assert spec.preset_ref == "pneumothorax@1"


def test_retrain_of_a_general_task_maps_nothing_and_keeps_the_modality() -> None:
    spec = enrich(request(), dataset(), Weights())  # general, CT, normal/finding
    out = enrich(retrain(dataset_id="ds2"), dataset(id="ds2"), Weights(), completed(spec))
    assert out.classes == ["normal", "finding"] and out.class_map == {} and out.preset is None
    with pytest.raises(Rejected) as exc:
        enrich(retrain(dataset_id="ds2"), dataset(id="ds2", modality="DX"), Weights(),
               completed(spec))
    assert codes(exc) == {("dataset_id", "modality_mismatch")}


@pytest.mark.parametrize(("over", "base", "expected"), [
    ({"model": {"mode": "manual", "network": "resnet18"}}, {},
     {("model.network", "not_allowed")}),
    ({"model": {"mode": "auto", "preference": {"goal": "fastest"}}}, {},
     {("model.preference", "not_allowed")}),
    ({"preset": "pneumothorax"}, {}, {("preset", "not_allowed")}),
    ({"base_task_id": None}, None, {("base_task_id", "base_task_required")}),
    ({"task_type": "segmentation"}, {}, {("task_type", "not_allowed")}),
    ({"tuning": {"mode": "manual", "hyperparameters": {"image_size": 128}}}, {},
     {("tuning.hyperparameters.image_size", "not_allowed")}),
    ({}, "missing", {("base_task_id", "base_task_not_found")}),
    ({}, {"tenant": "other"}, {("base_task_id", "base_task_not_found")}),
    ({}, {"state": "running"}, {("base_task_id", "base_task_not_completed")}),
    ({}, {"state": "failed"}, {("base_task_id", "base_task_not_completed")}),
    ({}, {"spec": None, "_no_spec": True}, {("base_task_id", "base_spec_missing")}),
    ({}, {"weights_key": None}, {("base_task_id", "base_weights_missing")}),
])
def test_retrain_rejection_table(over: dict[str, Any], base: Any,
                                 expected: set[tuple[str, str]]) -> None:
    if base == "missing" or base is None:
        found = None
    else:
        no_spec = base.pop("_no_spec", False)
        found = completed(**base)
        if no_spec:
            found = BaseTask(**{**found.__dict__, "spec": None})
    assert rejected(retrain(**over), ptx_ds(id="ptx2"), base=found) == expected


@pytest.mark.parametrize(("ds", "expected"), [
    ({"modality": "CT"}, {("dataset_id", "modality_mismatch")}),
    ({"annotation_type": "multi_label"}, {("dataset_id", "annotation_mismatch")}),
    ({"classes": ["normal", "ptx", "effusion"]}, {("dataset_id", "class_mismatch")}),
    ({"classes": ["normal", "effusion"]},
     {("dataset_id", "class_mismatch"), ("dataset_id", "class_missing")}),
    ({"modality": "MR", "annotation_type": "boxes", "classes": ["a", "b"]},
     {("dataset_id", "modality_mismatch"), ("dataset_id", "annotation_mismatch"),
      ("dataset_id", "class_mismatch"), ("dataset_id", "class_missing")}),
])
def test_retrain_lists_every_dataset_mismatch(ds: dict[str, Any],
                                              expected: set[tuple[str, str]]) -> None:
    with pytest.raises(Rejected) as exc:
        enrich(retrain(), ptx_ds(id="ptx2", **ds), Weights(), completed())
    assert codes(exc) == expected
    mismatched = [e for e in exc.value.errors if e.code == "class_mismatch"]
    named = {c for e in mismatched for c in ("effusion", "a", "b") if repr(c) in e.message}
    assert named == {c for c in ("effusion", "a", "b") if c in ds.get("classes", [])}


def test_general_flow_still_refuses_preset_and_base_task() -> None:
    assert rejected(request(preset="pneumothorax", base_task_id="t0"), dataset()) == {
        ("preset", "not_allowed"), ("base_task_id", "not_allowed")}


# --- runner: label mapping and the preset metrics -------------------------------


def test_class_map_renames_and_drops_labels_before_encoding() -> None:
    cases = [Case(case_id="a", images=["x"], labels=["subdural", "any"]),
             Case(case_id="b", images=["x"], labels=[]),
             Case(case_id="c", images=["x"], labels=["sdh", "epidural", "any"])]
    y = encode_labels(cases, ["subdural", "epidural"], "multi_label",
                      {"any": None, "sdh": "subdural"})
    assert y.tolist() == [[1, 0], [0, 0], [1, 1]]
    single = [Case(case_id="d", images=["x"], labels=["pneumothorax"])]
    assert encode_labels(single, ["normal", "ptx"], "single_label",
                         {"pneumothorax": "ptx"}).tolist() == [1]


def test_weighted_log_loss_derives_any_as_the_maximum() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.3]])
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    out = any_label_metrics(probs, target)
    # per image: subtypes + any (= max) with weight 2, over 1 + 1 + 2
    def bce(p: float, t: float) -> float:
        return float(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    img1 = (bce(0.9, 1) + bce(0.1, 0) + 2 * bce(0.9, 1)) / 4
    img2 = (bce(0.2, 0) + bce(0.3, 0) + 2 * bce(0.3, 0)) / 4
    assert out["weighted_log_loss"] == pytest.approx((img1 + img2) / 2, rel=1e-5)
    assert out["auc_any"] == 1.0
    logits = torch.logit(probs)
    metrics = classification_metrics(logits, target, "multi_label", ["a", "b"],
                                     ["weighted_log_loss", "auc_any"])
    assert metrics["weighted_log_loss"] == pytest.approx(out["weighted_log_loss"], rel=1e-4)
    assert "weighted_log_loss" not in classification_metrics(logits, target, "multi_label",
                                                             ["a", "b"])
