"""Smoke test of ``python -m bench.bench_listing``: it runs end to end and reports its checks."""

from __future__ import annotations

import pytest

from bench import bench_listing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_bench_listing_reports_every_row_and_check(capsys: pytest.CaptureFixture[str]) -> None:
    report = bench_listing.main(["--tasks", "1200", "--small", "100", "--tenants", "4",
                                 "--requests", "5"])
    rows = {(r["size"], r["query"].split("&cursor")[0]) for r in report["results"]}
    assert {(100, "one"), (100, "limit=20"), (1200, "limit=20"),
            (1200, "limit=20&state=completed"), (1200, "limit=20")} <= rows
    assert any("cursor" in r["query"] for r in report["results"])
    assert all(r["p50_ms"] > 0 and r["requests"] == 5 for r in report["results"])
    assert "limit=20 p50 under 50 ms" in report["checks"]
    assert "limit=20: p50 1200 / limit=20 p50 100" in report["checks"]
    assert "checks" in capsys.readouterr().out
