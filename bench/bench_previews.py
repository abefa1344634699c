"""Previews (issue 16 §4): a 512 × 512 CT preview through the real gateway, cold (first
request of a case: store read, decode, window, resize, PNG, cache write) and from the
cache, against a bare render of the same files in this process (``dcmread`` +
``pixel_array`` + rescale + brain window + Pillow resize + PNG): the least any
preview must do.

    python -m bench.bench_previews [--cases 40] [--size 512] [--requests 200] [--json]

Targets: p50 ≤ 300 ms cold and ≤ 50 ms from the cache (the issue's), printed with the
ratios to the bound, so two machines compare at a glance.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pydicom
from PIL import Image

from bench.bench_import import write_cases
from handlers.datasets_import.base import ImportOptions
from handlers.datasets_import.pipeline import import_dataset
from infra.bus.topology import connect
from infra.kv import DatasetRepo
from infra.settings import Settings
from infra.store import open_store
from radtrain.stack import Stack, start_stack

TARGET_COLD_MS = 300.0
TARGET_CACHED_MS = 50.0
BRAIN = (40.0, 80.0)


def bare_render(path: Path, size: int) -> bytes:
    """The bound: decode, rescale to HU, brain window, resize, PNG (no cache, no checks)."""
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    centre, width = BRAIN
    low = centre - width / 2
    pixels = (np.clip((hu - low) / width, 0.0, 1.0) * 255).astype(np.uint8)
    im = Image.fromarray(pixels).resize((size, size), Image.Resampling.LANCZOS).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def register(stack: Stack, root: Path) -> str:
    settings = stack.settings
    nc, js = await connect(settings, "bench-previews")
    try:
        report = await import_dataset(
            open_store(settings), await DatasetRepo.open(js), root,
            ImportOptions(name="previews", format="folder-csv", tenant=settings.default_tenant))
    finally:
        await nc.close()
    if not report.registered:
        raise SystemExit(f"import failed: {report.problems[:3]}")
    return report.dataset_id


async def time_gateway(stack: Stack, dataset_id: str, size: int, requests: int
                       ) -> tuple[list[float], list[float]]:
    """Cold: each case once; cached: ``requests`` repeats over the same cases."""
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    base = f"{stack.gateway_url}/v1/datasets/{dataset_id}"
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{base}/cases?limit=500") as resp:
            cases = [c["case_id"] for c in (await resp.json())["items"]]

        async def one(case: str) -> float:
            started = time.perf_counter()
            async with session.get(f"{base}/cases/{case}/preview.png",
                                   params={"window": "brain", "size": str(size)}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"preview {case}: {resp.status} {await resp.text()}")
                await resp.read()
            return time.perf_counter() - started

        cold = [await one(c) for c in cases]
        cached = [await one(cases[i % len(cases)]) for i in range(requests)]
    return cold, cached


def run(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    src = data / "src"
    write_cases(src, args.cases, size=args.size)
    files = sorted((src / "images").iterdir())
    bound = []
    for path in files:
        started = time.perf_counter()
        bare_render(path, args.size)
        bound.append(time.perf_counter() - started)
    settings = Settings(data_dir=data, store_dir=data / "store", cache_dir=data / "cache",
                        work_dir=data / "work", gateway_port=0, nats_port=0,
                        rate_limit_per_s=1e9, rate_limit_burst=1_000_000_000,
                        log_level="WARNING")
    stack = start_stack(settings, services=("gateway",))
    try:
        dataset_id = asyncio.run(register(stack, src))
        cold, cached = asyncio.run(time_gateway(stack, dataset_id, args.size, args.requests))
    finally:
        stack.stop()
    figures = {"bound_p50_ms": p50_ms(bound), "cold_p50_ms": p50_ms(cold),
               "cached_p50_ms": p50_ms(cached),
               "cold_p99_ms": sorted(cold)[int(0.99 * (len(cold) - 1))] * 1000}
    return {"cases": args.cases, "size": args.size, "requests": args.requests,
            "figures": figures,
            "ratios": {"cold p50 / bare render p50": figures["cold_p50_ms"]
                       / figures["bound_p50_ms"],
                       "cached p50 / bare render p50": figures["cached_p50_ms"]
                       / figures["bound_p50_ms"],
                       "cold p50 / target 300 ms": figures["cold_p50_ms"] / TARGET_COLD_MS,
                       "cached p50 / target 50 ms": figures["cached_p50_ms"]
                       / TARGET_CACHED_MS}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=40, help="distinct cases (cold requests)")
    parser.add_argument("--size", type=int, default=512, help="DICOM and preview side")
    parser.add_argument("--requests", type=int, default=200, help="cached requests")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="radtrain-bench-previews-") as tmp:
        report = run(args, Path(tmp))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        f = report["figures"]
        print(f"previews {args.size}x{args.size} CT, {args.cases} cases: bare render p50 "
              f"{f['bound_p50_ms']:.1f} ms; gateway cold p50 {f['cold_p50_ms']:.1f} ms "
              f"(p99 {f['cold_p99_ms']:.1f}), cached p50 {f['cached_p50_ms']:.1f} ms")
        for name, value in report["ratios"].items():
            print(f"  {name:<32}{value:>7.2f}")
    return report


if __name__ == "__main__":
    main()
