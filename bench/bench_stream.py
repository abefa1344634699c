"""Streaming a dataset over the runner's cache budget (issue 16): cases/s into training
batches from shards shared through the store, against the in-budget path (decode once
into a local memory-mapped cache) on the same data, in the same run.

    python -m bench.bench_stream [--cases 480] [--size 256] [--image-size 128]
                                 [--over 3] [--batch 32] [--epochs 2] [--json]

The budget is set to 1/``over`` of the decoded dataset. Phases, each one pass over
every case in the loop's order:

* first pass: ``prepare`` (decode; shards built and uploaded, or the local cache
  written) and one pass;
* later passes: shards fetched back from the store as the bounded local copy evicts
  them (in-budget: the memory-mapped cache);
* second runner: a fresh cache directory finds the set's index and streams it (no
  decoding at all).

Figures: each rate over the in-budget rate of the same phase, the CPU milliseconds per
case of each phase (``os.times``, decode workers included: what the cores pay, whatever
the load), and
the most local disk the shard cache held over the budget (must stay <= 1).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.bench_data import _spec
from infra.store import LocalStore
from radtrain.synthetic.ct import generate_dicom_dataset, synthetic_manifest
from runner.data import PreparedData, prepare
from runner.job import pick_device
from runner.loader import BatchSource, windowed_order
from runner.shards import WINDOW, case_bytes, prepare_within_budget
from schemas.dataset import DatasetManifest
from schemas.spec import TrainingSpec


def one_pass(data: PreparedData, source: BatchSource, batch: int, seed: int) -> None:
    """Every case once, in the order the training loop would draw them."""
    cases = np.arange(len(data.case_ids))
    gen = torch.Generator().manual_seed(seed)
    if data.shards is None:
        order = cases[torch.randperm(len(cases), generator=gen).numpy()]
    else:
        order = windowed_order(cases, data.shards.shard_of(cases), gen, WINDOW)
    for xb, _ in source.batches([order[i:i + batch] for i in range(0, len(order), batch)]):
        assert xb.dtype == torch.float32
    if source.device.type == "cuda":
        torch.cuda.synchronize()


def _cpu_s() -> float:
    """This process's CPU seconds and its finished children's (the decode pool's)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _timed(fn: Any, cases: int) -> tuple[float, float]:
    """(cases/s, CPU ms per case) of ``fn()``."""
    wall, cpu = time.perf_counter(), _cpu_s()
    fn()
    return cases / (time.perf_counter() - wall), (_cpu_s() - cpu) * 1000 / cases


def _prepare(spec: TrainingSpec, manifest: DatasetManifest, store: LocalStore, cache: Path,
             budget: int | None) -> PreparedData:
    """The in-budget path (``budget`` None) or the runner's choice under ``budget``."""
    if budget is None:
        return prepare(spec, manifest, store, cache)
    return prepare_within_budget(spec, manifest, store, cache, budget)


def path_figures(spec: TrainingSpec, manifest: DatasetManifest, store: LocalStore,
                 cache: Path, budget: int | None, args: argparse.Namespace,
                 device: torch.device) -> dict[str, Any]:
    """First pass, later passes (and, streaming, a second runner) of one path."""
    n, out = len(manifest.cases), dict[str, Any]()
    held: list[PreparedData] = []

    def first() -> None:
        data = _prepare(spec, manifest, store, cache, budget)
        held.append(data)
        one_pass(data, BatchSource(data, device, args.workers), args.batch, 0)

    out["first_pass"] = _timed(first, n)
    data = held[0]
    source = BatchSource(data, device, args.workers)

    def later() -> None:
        for e in range(args.epochs):
            one_pass(data, source, args.batch, e + 1)

    out["later_pass"] = _timed(later, n * args.epochs)
    if data.shards is not None:
        out["peak_disk_bytes"] = data.shards.cache.peak
        out["shard_fetches"] = data.shards.cache.downloads
        out["shards"] = len(data.shards.index["shards"])

        def second() -> None:
            again = _prepare(spec, manifest, store, cache.with_name(cache.name + "-b"), budget)
            assert again.cache_hit
            one_pass(again, BatchSource(again, device, args.workers), args.batch, 0)
            out["peak_disk_bytes"] = max(out["peak_disk_bytes"], again.shards.cache.peak
                                         if again.shards else 0)

        out["second_runner"] = _timed(second, n)
    return out


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    device = torch.device(pick_device(args.device))
    store = LocalStore(root / "store")
    cases = generate_dicom_dataset(root / "gen", n_cases=args.cases, seed=0, size=args.size)
    for c in cases:
        store.put_file(f"datasets/bench/cases/{c.file}", root / "gen" / c.file)
    raw = json.dumps(synthetic_manifest("bench", "bench", cases)).encode()
    spec = _spec(store.put_bytes("datasets/bench/manifest.json", raw).sha256, len(cases),
                 args.image_size)
    manifest = DatasetManifest.model_validate_json(raw)
    dataset_bytes = len(cases) * case_bytes(spec)
    budget = dataset_bytes // args.over
    cached = path_figures(spec, manifest, store, root / "cached", None, args, device)
    stream = path_figures(spec, manifest, store, root / "stream", budget, args, device)
    rates = {f"{path} {phase}": {"cases_per_s": fig[0], "cpu_ms_per_case": fig[1]}
             for path, figs in (("in-budget", cached), ("stream", stream))
             for phase, fig in figs.items() if isinstance(fig, tuple)}
    return {
        "device": str(device), "cases": args.cases, "dicom_size": args.size,
        "image_size": args.image_size, "batch": args.batch, "epochs": args.epochs,
        "dataset_bytes": dataset_bytes, "budget_bytes": budget,
        "peak_disk_bytes": stream["peak_disk_bytes"], "shards": stream["shards"],
        "shard_fetches": stream["shard_fetches"], "rates": rates,
        "ratios": {
            "stream first pass / in-budget first pass":
                stream["first_pass"][0] / cached["first_pass"][0],
            "stream later pass / in-budget later pass":
                stream["later_pass"][0] / cached["later_pass"][0],
            "stream later pass / in-budget first pass":
                stream["later_pass"][0] / cached["first_pass"][0],
            "second runner pass / in-budget first pass":
                stream["second_runner"][0] / cached["first_pass"][0],
            "peak local disk / budget": stream["peak_disk_bytes"] / budget,
            # the same figures by CPU per case (in-budget CPU over streaming CPU): unlike a
            # rate they do not move with whatever else runs on the machine
            "stream first pass / in-budget first pass, by CPU per case":
                cached["first_pass"][1] / stream["first_pass"][1],
            "stream later pass / in-budget later pass, by CPU per case":
                cached["later_pass"][1] / stream["later_pass"][1],
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_stream", description=__doc__)
    parser.add_argument("--cases", type=int, default=480)
    parser.add_argument("--size", type=int, default=256, help="DICOM rows/columns")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--over", type=int, default=3, help="dataset / budget")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (in-budget)")
    parser.add_argument("--epochs", type=int, default=2, help="later passes to time")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="radtrain-bench-stream-") as tmp:
        report = measure(args, Path(tmp))
    if args.json:
        print(json.dumps(report, indent=2))
        return report
    print(f"device {report['device']}, {args.cases} DICOM {args.size}px -> {args.image_size}px,"
          f" dataset {report['dataset_bytes'] / 2**20:.1f} MiB, budget "
          f"{report['budget_bytes'] / 2**20:.1f} MiB, {report['shards']} shards")
    for name, fig in report["rates"].items():
        print(f"  {name:<28} {fig['cases_per_s']:9.1f} cases/s "
              f"{fig['cpu_ms_per_case']:7.2f} CPU ms/case")
    print("ratios:")
    for name, value in report["ratios"].items():
        print(f"  {name:<42} {value:7.2f}")
    return report


if __name__ == "__main__":
    main()
