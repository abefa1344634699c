"""``radtrain presets list|show``: the catalog data, with no stack running."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from radtrain.cli.main import app


def test_list_and_show_presets() -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["presets", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    page = json.loads(listed.output)
    assert page["total"] == 3
    assert {p["id"] for p in page["items"]} == {"intracranial-hemorrhage", "pneumothorax",
                                                "pulmonary-embolism"}
    shown = runner.invoke(app, ["presets", "show", "pulmonary-embolism", "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["windows"][0]["center"] == 100
    table = runner.invoke(app, ["presets", "list"])
    assert table.exit_code == 0 and "pneumothorax" in table.output
    unknown = runner.invoke(app, ["presets", "show", "knee"])
    assert unknown.exit_code == 3 and "unknown preset" in unknown.stderr  # not found
