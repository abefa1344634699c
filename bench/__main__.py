"""Every benchmark in one run (``make bench``): one JSON file and one markdown table of
figures and ratios, each ratio against a bound measured in the same run.

    python -m bench [--quick] [--only submit,previews] [--out bench-output]

Each benchmark runs in its own process (``python -m bench.<module> --json``), so one
that fails is recorded with its error and the others still run. The table puts every
ratio beside the target the issues set (DESIGN.md §12, issue 16), so two runs or two
machines compare at a glance.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.summary import BENCHES, Row, markdown, rows_of


def run_one(module: str, args: list[str], timeout_s: float) -> dict[str, object]:
    """The benchmark's JSON report, or ``{"error": ...}``."""
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", f"bench.{module}", *args, "--json"],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-600:]}"}
    out = done.stdout
    try:
        report: dict[str, object] = json.loads(out[out.index("{"):])
    except ValueError:
        return {"error": f"no JSON report in its output: {out[-300:]!r}"}
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", default="", help="comma-separated names: " +
                        ", ".join(b.name for b in BENCHES))
    parser.add_argument("--out", type=Path, default=Path("bench-output"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="per benchmark (s)")
    args = parser.parse_args(argv)
    wanted = {n for n in args.only.split(",") if n}
    unknown = wanted - {b.name for b in BENCHES}
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    reports: dict[str, dict[str, object]] = {}
    rows: list[Row] = []
    for bench in BENCHES:
        if wanted and bench.name not in wanted:
            continue
        print(f"running {bench.name} ...", file=sys.stderr, flush=True)
        reports[bench.name] = run_one(bench.module, bench.quick if args.quick else bench.full,
                                      args.timeout)
        rows += rows_of(bench, reports[bench.name])
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"host": platform.node(), "python": platform.python_version(),
               "machine": platform.machine(), "cpus": _cpus(), "quick": args.quick}
    doc = {"at": stamp, "machine": machine, "rows": [r.as_dict() for r in rows],
           "reports": reports}
    (args.out / f"bench-{stamp}.json").write_text(json.dumps(doc, indent=2, default=str))
    table = markdown(rows, machine, stamp)
    (args.out / f"bench-{stamp}.md").write_text(table)
    print(table)
    print(f"written: {args.out / f'bench-{stamp}.json'} and .md", file=sys.stderr)
    return 1 if any("error" in r for r in reports.values()) else 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    raise SystemExit(main())
