"""Smoke test of ``python -m bench`` (``make bench``) on the previews benchmark: its
report becomes the JSON file and the markdown table, ratios beside their targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import bench_previews
from bench.__main__ import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_previews_bench_reports_cold_cached_and_the_bound() -> None:
    report = bench_previews.main(["--cases", "3", "--requests", "6", "--size", "128"])
    figures = report["figures"]
    assert figures["cold_p50_ms"] > 0 and figures["cached_p50_ms"] > 0
    assert figures["bound_p50_ms"] > 0
    assert set(report["ratios"]) == {"cold p50 / bare render p50",
                                     "cached p50 / bare render p50",
                                     "cold p50 / target 300 ms", "cached p50 / target 50 ms"}


def test_make_bench_writes_one_json_and_one_table(tmp_path: Path) -> None:
    assert main(["--quick", "--only", "previews", "--out", str(tmp_path)]) == 0
    [doc_path] = tmp_path.glob("bench-*.json")
    doc = json.loads(doc_path.read_text())
    assert [r["bench"] for r in doc["rows"]] == ["previews"] * 3
    assert "figures" in doc["reports"]["previews"]
    table = doc_path.with_suffix(".md").read_text()
    assert "| previews | cold p50 / 300 ms |" in table and "<= 1" in table
