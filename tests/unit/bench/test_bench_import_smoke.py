"""The import benchmark runs end to end (a few cases; the real figure uses 10,000)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_bench_import_runs_on_a_few_cases() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.bench_import", "--cases", "50",
                           "--memory-kv", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cases"] == 50
    assert result["import_cases_per_s"] > 0 and 0 < result["ratio"] < 10
