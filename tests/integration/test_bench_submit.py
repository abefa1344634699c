"""Smoke test of ``python -m bench.bench_submit``: it runs end to end and reports ratios."""

from __future__ import annotations

import pytest

from bench import bench_submit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_bench_submit_reports_every_path_and_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    report = bench_submit.main(["--requests", "20", "--concurrency", "4"])
    paths = {(r["sync"], r["path"]) for r in report["results"]}
    assert paths == {(s, p) for s in ("always", "default")
                     for p in ("raw nats-py", "bare HTTP", "bare HTTP+publish", "gateway",
                               "gateway+idempotency-key")}
    assert all(r["rps"] > 0 and r["requests"] == 20 for r in report["results"])
    assert "gateway/raw throughput, sync always" in report["ratios"]
    assert "raw nats-py throughput, always/default" in report["ratios"]
    assert {"gateway/bare HTTP throughput, sync default",
            "bare HTTP+publish/raw throughput, sync default",
            "gateway/bare HTTP+publish throughput, sync always",
            "idempotency-key/plain throughput, sync always"} <= set(report["ratios"])
    assert isinstance(report["key_band"], bool)
    assert report["gateway_workers"] == 1
    for r in report["results"]:  # the CPU split of each path, whatever the machine's load
        servers = {"bare server"} if r["path"] == "bare HTTP" else (
            {"bare server", "nats-server"} if r["path"] == "bare HTTP+publish"
            else {"nats-server"})
        assert {*servers, "bench client", "total"} <= set(r["cpu_ms"])
        assert ("gateway" in r["cpu_ms"]) == r["path"].startswith("gateway")
    out = capsys.readouterr().out
    assert "ratios" in out and "CPU ms per request" in out
