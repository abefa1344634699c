"""Data path (DESIGN.md §12): DICOM cases/s into training batches on the device, in the
first epoch (download + decode + preprocess + cache write, then batches) and in
cached epochs (batches from the memory-mapped cache), against a raw pydicom +
numpy decode of the same files (``dcmread`` + ``pixel_array`` + rescale to HU).

    python -m bench.bench_data [--cases 200] [--size 256] [--image-size 128]
                               [--batch 32] [--workers 0] [--decode-workers 0]
                               [--epochs 3] [--json]

A ratio above 1 means the runner's path is faster than decoding the files;
cached epochs should be far above 1 (no decoding at all). The first epoch also
windows, resizes and writes the cache, on ``--decode-workers`` processes (0: every
core, as ``runner_decode_workers``), while the bound is one process: the target
(>= 0.8x) asks the runner to buy back its extra work with the other cores. The
same decode on every core, and the CPU milliseconds per case of each path (this
process and its decode workers together: a figure that does not move with the
machine's load), are reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch

from infra.store import LocalStore
from radtrain.synthetic.ct import DEMO_WINDOWS, generate_dicom_dataset, synthetic_manifest
from runner.data import PreparedData, prepare
from runner.decode_pool import resolve_workers
from runner.job import pick_device
from runner.loader import BatchSource
from schemas.dataset import DatasetManifest
from schemas.spec import TrainingSpec


def _spec(sha: str, n: int, image_size: int) -> TrainingSpec:
    return TrainingSpec.model_validate({
        "task_id": "bench-data", "tenant": "bench", "name": "bench", "flow": "general",
        "task_type": "classification",
        "dataset": {"dataset_id": "bench", "manifest_key": "datasets/bench/manifest.json",
                    "sha256": sha, "annotation_type": "single_label", "modality": "CT",
                    "num_cases": n},
        "classes": ["normal", "finding"], "label_mode": "single_label",
        "preprocessing": {"image_size": image_size, "channels": 3, "windows": DEMO_WINDOWS,
                          "mean": [0.5], "std": [0.5]},
        "model": {"entry_id": "resnet10t", "builder": "timm", "network": "resnet10t",
                  "pretrained": False, "num_classes": 2, "in_chans": 3},
        "hyperparameters": {"image_size": image_size},
        "resources": {"gpus": 0},
    })


def raw_decode(files: list[Path]) -> float:
    """The bound: cases/s of pydicom + numpy alone (no windowing, resizing or caching)."""
    started = time.perf_counter()
    _decode_all(files)
    return len(files) / (time.perf_counter() - started)


def _decode_all(files: list[Path]) -> int:
    for path in files:
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(
            ds.RescaleIntercept)
        assert hu.size
    return len(files)


def raw_decode_parallel(files: list[Path], workers: int) -> float:
    """The same decode on ``workers`` processes (informative: not the issue's bound)."""
    chunks = [files[i::workers * 4] for i in range(workers * 4)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode_all, chunks[:workers]))  # started, not timed
        started = time.perf_counter()
        done = sum(pool.map(_decode_all, chunks))
    return done / (time.perf_counter() - started)


def cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def one_pass(data: PreparedData, source: BatchSource, batch: int, device: torch.device) -> None:
    """Every case once, as the training loop would draw them (shuffled batches)."""
    order = np.random.default_rng(0).permutation(len(data.case_ids))
    plan = [order[i:i + batch] for i in range(0, len(order), batch)]
    for xb, _ in source.batches(plan):
        assert xb.dtype == torch.float32
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    device = torch.device(pick_device(args.device))
    store = LocalStore(root / "store")
    cases = generate_dicom_dataset(root / "gen", n_cases=args.cases, seed=0, size=args.size)
    files = [root / "gen" / c.file for c in cases]
    for c, path in zip(cases, files, strict=True):
        store.put_file(f"datasets/bench/cases/{c.file}", path)
    raw = json.dumps(synthetic_manifest("bench", "bench", cases)).encode()
    spec = _spec(store.put_bytes("datasets/bench/manifest.json", raw).sha256, len(cases),
                 args.image_size)
    manifest = DatasetManifest.model_validate_json(raw)
    cpu0 = cpu_s()
    bound = raw_decode(files)
    bound_cpu_ms = (cpu_s() - cpu0) * 1000 / args.cases
    decoders = resolve_workers(args.decode_workers)
    parallel = raw_decode_parallel(files, decoders)

    started, cpu0 = time.perf_counter(), cpu_s()
    data = prepare(spec, manifest, store, root / "cache", workers=decoders)
    one_pass(data, BatchSource(data, device, args.workers), args.batch, device)
    first = args.cases / (time.perf_counter() - started)
    first_cpu_ms = (cpu_s() - cpu0) * 1000 / args.cases

    started = time.perf_counter()
    data = prepare(spec, manifest, store, root / "cache")
    assert data.cache_hit
    source = BatchSource(data, device, args.workers)
    for _ in range(args.epochs):
        one_pass(data, source, args.batch, device)
    cached = args.cases * args.epochs / (time.perf_counter() - started)
    return {
        "device": str(device), "cases": args.cases, "dicom_size": args.size,
        "image_size": args.image_size, "batch": args.batch, "workers": args.workers,
        "decode_workers": decoders, "resident_on_device": source.resident,
        "raw_pydicom_cases_per_s": bound, "raw_pydicom_all_cores_cases_per_s": parallel,
        "first_epoch_cases_per_s": first, "cached_epoch_cases_per_s": cached,
        "cpu_ms_per_case": {"raw decode": bound_cpu_ms, "first epoch": first_cpu_ms},
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "ratios": {"first epoch / raw decode": first / bound,
                   "cached epoch / raw decode": cached / bound},
        "first_epoch_over_raw_decode_on_the_same_cores": first / parallel,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_data", description=__doc__)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--size", type=int, default=256, help="DICOM rows/columns")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--decode-workers", type=int, default=0,
                        help="first-epoch decode processes (0: every core)")
    parser.add_argument("--epochs", type=int, default=3, help="cached epochs to time")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="radtrain-bench-data-") as tmp:
        report = measure(args, Path(tmp))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"device {report['device']}, {args.cases} DICOM {args.size}px -> "
              f"{args.image_size}px, batch {args.batch}, workers {args.workers}")
        cpu, decoders = report["cpu_ms_per_case"], report["decode_workers"]
        print(f"  raw pydicom decode (bound)   {report['raw_pydicom_cases_per_s']:9.1f} cases/s"
              f"  {cpu['raw decode']:6.2f} CPU ms/case")
        print(f"  raw decode on {decoders:>2} processes "
              f"{report['raw_pydicom_all_cores_cases_per_s']:9.1f} cases/s")
        print(f"  first epoch (decode + cache) {report['first_epoch_cases_per_s']:9.1f} cases/s"
              f"  {cpu['first epoch']:6.2f} CPU ms/case ({decoders} decode workers)")
        print(f"  cached epochs                {report['cached_epoch_cases_per_s']:9.1f} cases/s")
        same_cores = report["first_epoch_over_raw_decode_on_the_same_cores"]
        print(f"  load average {report['load_average']}; first epoch / raw decode on "
              f"{decoders} processes {same_cores:.2f}x")
        print("ratios:")
        for name, value in report["ratios"].items():
            print(f"  {name:<28} {value:7.2f}x")
    return report


if __name__ == "__main__":
    main()
