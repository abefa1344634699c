"""Smoke test of ``python -m bench.bench_enrich``: every path runs and the ratios print."""

from __future__ import annotations

import pytest

from bench import bench_enrich

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_bench_enrich_reports_every_path_and_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    report = bench_enrich.main(["--events", "30", "--tasks", "30", "--concurrency", "4"])
    paths = [r["path"] for r in report["results"]]
    assert paths == ["e2e rejected (POST → KV)", "  of which gateway POST → 202",
                     "raw (one by one)", "raw (batch)", "enrich (handlers' subscriber)"]
    assert all(r["rate"] > 0 and r["count"] == 30 for r in report["results"])
    assert {"enrich / raw (batch)", "e2e rejected / raw (batch)"} <= report["ratios"].keys()
    cpu = report["e2e_cpu_ms_per_task"]
    assert {"gateway", "handlers", "nats-server", "bench client"} <= cpu.keys()
    assert cpu["total"] == pytest.approx(sum(v for k, v in cpu.items() if k != "total"))
    assert report["e2e_cpu_ceiling_per_s"] > 0
    done = report["e2e_settled_cpu_ms_per_task"]  # every consumer caught up: no less work
    assert done.keys() == cpu.keys() and done["handlers"] >= cpu["handlers"]
    assert report["e2e_settled_after_s"] >= 0
    writes = report["e2e_writes_per_task"]  # a rejected task: requested and rejected, ...
    assert (writes["TASKS"], writes["KV_tasks"]) == (2.0, 2.0)
    assert "KV_admissions" not in writes  # a drawn task id is published unclaimed
    # ... listed: marker (created naming its state, then both positions), two slots, some
    # counter writes
    assert 4.0 < writes["KV_listings"] <= 12.0, writes
    out = capsys.readouterr().out
    assert "ratios" in out and "e2e CPU ms per task" in out and "every consumer is done" in out
    assert "e2e JetStream writes per task" in out
