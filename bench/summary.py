"""The figures ``python -m bench`` reports from each benchmark, with their targets (pure).

A row is one ratio (or figure) of one benchmark's JSON report and the target the
issues set for it: ``>= 0.6`` means the ratio should reach 0.6, ``<= 1`` that it
should stay under. A figure without a target is shown for reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

Extract = Callable[[dict[str, Any]], "float | bool | None"]


@dataclass(frozen=True)
class Figure:
    label: str
    extract: Extract
    target: tuple[str, float] | None = None
    """(">=" or "<=", value); ``None``: for reference."""


@dataclass(frozen=True)
class Bench:
    name: str
    module: str
    full: list[str]
    quick: list[str]
    figures: tuple[Figure, ...]


@dataclass(frozen=True)
class Row:
    bench: str
    figure: str
    value: float | bool | None
    target: str
    met: bool | None
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio(name: str) -> Extract:
    return lambda r: r.get("ratios", {}).get(name)


def ratio_of(numerator: str, denominator: str) -> Extract:
    """One ratio of the report over another (e.g. the Idempotency-Key path over the plain)."""
    def get(r: dict[str, Any]) -> float | None:
        a, b = r.get("ratios", {}).get(numerator), r.get("ratios", {}).get(denominator)
        return a / b if a is not None and b else None
    return get


def listing_growth(r: dict[str, Any]) -> float | None:
    return next((v for k, v in r.get("checks", {}).items() if k.startswith("limit=20: p50")),
                None)


def _submit_figures() -> tuple[Figure, ...]:
    out: list[Figure] = []
    for sync in ("always", "default"):
        out += [Figure(f"gateway / raw publishes, req/s, sync {sync}",
                       ratio(f"gateway/raw throughput, sync {sync}"), (">=", 0.6)),
                Figure(f"gateway / raw publishes, p99, sync {sync}",
                       ratio(f"gateway/raw p99, sync {sync}"), ("<=", 3.0)),
                Figure(f"Idempotency-Key path / plain path, req/s, sync {sync}",
                       ratio_of(f"gateway+idempotency-key/raw throughput, sync {sync}",
                                f"gateway/raw throughput, sync {sync}"), (">=", 0.8))]
    # The HTTP hop alone (bench/bare_http.py): how much of the gap is HTTP, how much ours.
    out += [Figure("bare HTTP 202 / raw publishes, req/s, sync default",
                   ratio("bare HTTP/raw throughput, sync default")),
            Figure("gateway / bare HTTP 202, req/s, sync default",
                   ratio("gateway/bare HTTP throughput, sync default")),
            # The hop and the raw publish, nothing else: the most any front reaches here.
            Figure("bare HTTP+publish / raw publishes, req/s, sync default",
                   ratio("bare HTTP+publish/raw throughput, sync default")),
            Figure("gateway / bare HTTP+publish, req/s, sync default",
                   ratio("gateway/bare HTTP+publish throughput, sync default"))]
    # Issue 16 item 3 (H4): what bounds the path whatever else shares the machine.
    out += [Figure("gateway CPU ms per request (plain, sync default)",
                   _submit_cpu("gateway", "gateway")),
            Figure("submit CPU-bound ceiling, req/s (plain, sync default)",
                   _submit_cpu("gateway", None))]
    return tuple(out)


def _submit_cpu(path: str, process: str | None) -> Extract:
    """One process's CPU ms per request on ``path`` (sync default), or (``None``) the rate
    the machine's cores allow at the whole path's cost."""
    def get(r: dict[str, Any]) -> float | None:
        for row in r.get("results", []):
            if row.get("sync") == "default" and row.get("path") == path:
                if process is None:
                    return row.get("cpu_ceiling_per_s")
                return row.get("cpu_ms", {}).get(process)
        return None
    return get


BENCHES: tuple[Bench, ...] = (
    Bench("submit", "bench_submit", [], ["--requests", "300", "--concurrency", "16"],
          _submit_figures()),
    Bench("enrich", "bench_enrich", [], ["--events", "300", "--tasks", "300",
                                         "--concurrency", "16"], (
        Figure("enrich / raw consume-publish (batch)", ratio("enrich / raw (batch)")),
        Figure("enrich events/s / 1,000", ratio("enrich / target 1000 events/s"), (">=", 1.0)),
        Figure("e2e rejected tasks/s / 500", ratio("e2e rejected / target 500 tasks/s"),
               (">=", 1.0)),
        Figure("e2e CPU-bound ceiling, tasks/s", lambda r: r.get("e2e_cpu_ceiling_per_s")))),
    Bench("import", "bench_import", ["--cases", "5000", "--s3"], ["--cases", "300", "--s3"], (
        Figure("import / bare header reads", lambda r: r.get("ratio"), (">=", 0.6)),
        Figure("S3 import / bare boto3 upload, same threads", lambda r: r.get("s3_ratio"),
               (">=", 0.5)))),
    Bench("data", "bench_data", [], ["--cases", "40", "--epochs", "1"], (
        Figure("first epoch / bare decode", ratio("first epoch / raw decode"), (">=", 0.8)),
        Figure("cached epoch / bare decode", ratio("cached epoch / raw decode"),
               (">=", 10.0)))),
    Bench("stream", "bench_stream", [], ["--cases", "60", "--size", "96", "--epochs", "1"], (
        Figure("over-budget first pass (shard build) / in-budget first pass",
               ratio("stream first pass / in-budget first pass"), (">=", 0.8)),
        Figure("over-budget later pass / in-budget first pass (decode)",
               ratio("stream later pass / in-budget first pass"), (">=", 3.0)),
        Figure("over-budget later pass / in-budget later pass",
               ratio("stream later pass / in-budget later pass")),
        Figure("over-budget first pass / in-budget first pass, by CPU per case",
               ratio("stream first pass / in-budget first pass, by CPU per case")),
        Figure("peak local disk / budget", ratio("peak local disk / budget"), ("<=", 1.0)))),
    Bench("train", "bench_train", [], ["--cases", "64", "--epochs", "2", "--steps", "5"], (
        Figure("runner loop / synthetic tensors", ratio("runner loop / synthetic on device"),
               (">=", 0.9)),)),
    Bench("previews", "bench_previews", [], ["--cases", "5", "--requests", "20"], (
        Figure("cold p50 / 300 ms", ratio("cold p50 / target 300 ms"), ("<=", 1.0)),
        Figure("cached p50 / 50 ms", ratio("cached p50 / target 50 ms"), ("<=", 1.0)),
        Figure("cold p50 / bare render p50", ratio("cold p50 / bare render p50")))),
    Bench("listing", "bench_listing", [], ["--tasks", "2000", "--requests", "20"], (
        Figure("page p50 at the large size / at the small", listing_growth, ("<=", 2.0)),
        Figure("page p50 under 50 ms at the large size",
               lambda r: r.get("checks", {}).get("limit=20 p50 under 50 ms")))),
)


def rows_of(bench: Bench, report: dict[str, Any]) -> list[Row]:
    if "error" in report:
        return [Row(bench.name, "(did not run)", None, "", False, str(report["error"]))]
    rows = []
    for fig in bench.figures:
        value = fig.extract(report)
        target, met = "", None
        if fig.target is not None:
            op, bound = fig.target
            target = f"{op} {bound:g}"
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                met = value >= bound if op == ">=" else value <= bound
        elif isinstance(value, bool):
            met = value
        rows.append(Row(bench.name, fig.label, value, target, met))
    return rows


def markdown(rows: list[Row], machine: dict[str, Any], stamp: str) -> str:
    head = (f"# radtrain benchmarks, {stamp}\n\n"
            f"{machine.get('host')} · {machine.get('cpus')} CPUs · Python "
            f"{machine.get('python')}{' · quick sizes' if machine.get('quick') else ''}\n\n"
            "| benchmark | figure | value | target | met |\n| --- | --- | --- | --- | --- |\n")
    lines = []
    for r in rows:
        value = (r.error[:80] if r.error else "–" if r.value is None
                 else str(r.value) if isinstance(r.value, bool) else f"{r.value:.3g}")
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.bench} | {r.figure} | {value} | {r.target} | {met} |")
    return head + "\n".join(lines) + "\n"
