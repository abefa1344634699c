"""``radtrain presets check PRESET DATASET``: a preset's minimums against a dataset (issue 15)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from radtrain.cli import datasets as datasets_cli
from radtrain.cli.main import app
from tests.support.factories import dataset


def _summary(counts: dict[str, int], n: int) -> Any:
    stats = {"num_images": n, "class_counts": counts,
             "positive_rate": {k: v / n for k, v in counts.items()}, "patients": n,
             "cases_without_patient": 0, "splits": {"unassigned": n}}
    return dataset(id="ich", annotation_type="multi_label", classes=[*counts], num_cases=n,
                   stats=stats)


def test_check_warns_under_the_minimums_and_fails_below_the_floor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    rare = _summary({"subarachnoid": 5, "subdural": 6, "epidural": 0, "intraparenchymal": 5,
                     "intraventricular": 4}, 100)
    monkeypatch.setattr(datasets_cli, "_get", lambda dataset_id, tenant: rare)
    out = runner.invoke(app, ["presets", "check", "intracranial-hemorrhage", "ich"])
    assert out.exit_code == 0, out.output
    assert "intracranial-hemorrhage@1" in out.output
    assert "warning: class 'epidural' has no positive case" in out.output
    as_json = runner.invoke(app, ["presets", "check", "intracranial-hemorrhage", "ich",
                                  "--json"])
    body = json.loads(as_json.output)
    assert body["positives"]["epidural"] == 0 and not body["errors"] and body["warnings"]
    tiny = _summary(dict.fromkeys(["subarachnoid", "subdural"], 2), 10)
    monkeypatch.setattr(datasets_cli, "_get", lambda dataset_id, tenant: tiny)
    refused = runner.invoke(app, ["presets", "check", "intracranial-hemorrhage", "ich"])
    assert refused.exit_code == 1 and "least 20 to train" in refused.stderr
    unknown = runner.invoke(app, ["presets", "check", "knee", "ich"])
    assert unknown.exit_code == 3
