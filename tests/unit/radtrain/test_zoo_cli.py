"""``radtrain zoo list|show|suggest`` read the checked-in catalog; no stack needed."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from handlers.catalog.zoo import list_entries
from radtrain.cli.main import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["zoo", *args])
    return result.exit_code, result.output


def test_list_json_is_paged_like_the_api() -> None:
    code, out = run("list", "--task-type", "segmentation", "--limit", "3", "--json")
    body = json.loads(out)
    assert code == 0 and body["total"] == len(list_entries("segmentation"))
    assert [e["id"] for e in body["items"]] == [e.id for e in list_entries("segmentation")[:3]]
    code, out = run("list", "--family", "deit", "--limit", "2")
    assert code == 0 and "deit" in out and "entries" in out


def test_show_resolves_aliases_and_reports_unknown_entries() -> None:
    code, out = run("show", "resnet10t", "--json")
    assert code == 0 and json.loads(out)["id"] == "resnet10t.c3_in1k"
    code, out = run("show", "efficientnet_lite0")
    assert code == 0 and "zoo/weights/efficientnet_lite0.wheel_in1k.safetensors" in out
    result = runner.invoke(app, ["zoo", "show", "no_such_net"])
    assert result.exit_code == 3  # not found (radtrain --help), said on stderr
    assert "radtrain zoo list" in result.stderr and "radtrain zoo list" not in result.stdout


def test_suggest_ranks_with_reasons() -> None:
    args = ("suggest", "--task-type", "detection", "--modality", "DX", "--image-size", "1024",
            "--cases", "300", "--goal", "fastest", "--target", "edge", "--limit", "2", "--json")
    code, out = run(*args)
    items = json.loads(out)["items"]
    assert code == 0 and len(items) == 2 and items[0]["score"] >= items[1]["score"]
    assert all("fastest on edge" in i["reason"] for i in items)
    assert run(*args) == (code, out)  # deterministic
    code, out = run("suggest", "--cases", "0")
    assert code == 2 and "num_cases" in out
