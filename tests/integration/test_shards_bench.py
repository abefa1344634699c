"""Smoke test of ``python -m bench.bench_stream`` at a minimal size: it runs end to end and
reports its rates and ratios (no speed assertions; the disk bound is a property, checked)."""

from __future__ import annotations

import pytest

from bench import bench_stream
from bench.summary import BENCHES, rows_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_bench_stream_reports_every_phase_and_stays_in_the_budget(
        capsys: pytest.CaptureFixture[str]) -> None:
    report = bench_stream.main(["--cases", "30", "--size", "48", "--image-size", "32",
                                "--batch", "4", "--epochs", "1"])
    assert report["dataset_bytes"] >= 3 * report["budget_bytes"]
    assert set(report["rates"]) == {f"{path} {phase}" for path in ("in-budget", "stream")
                                    for phase in ("first_pass", "later_pass")} | {
        "stream second_runner"}
    assert all(r["cases_per_s"] > 0 for r in report["rates"].values())
    assert 0 < report["ratios"]["peak local disk / budget"] <= 1.0
    assert report["shard_fetches"] > 0  # the later pass fetched evicted shards back
    [bench] = [b for b in BENCHES if b.name == "stream"]
    rows = rows_of(bench, report)
    assert all(r.value is not None for r in rows)
    assert "ratios" in capsys.readouterr().out
