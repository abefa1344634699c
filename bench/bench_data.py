"""Data path (DESIGN.md §12): DICOM cases/s into training batches on the device, in the
first epoch (download + decode + preprocess + cache write, then batches) and in
cached epochs (batches from the memory-mapped cache), against a raw pydicom +
numpy decode of the same files (``dcmread`` + ``pixel_array`` + rescale to HU).

    python -m bench.bench_data [--cases 200] [--size 256] [--image-size 128]
                               [--batch 32] [--workers 0] [--epochs 3] [--json]

A ratio above 1 means the runner's path is faster than decoding the files;
cached epochs should be far above 1 (no decoding at all), the first epoch
somewhat below (it also windows, resizes and writes the cache).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch

from infra.store import LocalStore
from radtrain.synthetic.ct import DEMO_WINDOWS, generate_dicom_dataset, synthetic_manifest
from runner.data import PreparedData, prepare
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
    for path in files:
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(
            ds.RescaleIntercept)
        assert hu.size
    return len(files) / (time.perf_counter() - started)


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
    bound = raw_decode(files)

    started = time.perf_counter()
    data = prepare(spec, manifest, store, root / "cache")
    one_pass(data, BatchSource(data, device, args.workers), args.batch, device)
    first = args.cases / (time.perf_counter() - started)

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
        "resident_on_device": source.resident,
        "raw_pydicom_cases_per_s": bound, "first_epoch_cases_per_s": first,
        "cached_epoch_cases_per_s": cached,
        "ratios": {"first epoch / raw decode": first / bound,
                   "cached epoch / raw decode": cached / bound},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_data", description=__doc__)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--size", type=int, default=256, help="DICOM rows/columns")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
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
        print(f"  raw pydicom decode (bound)   {report['raw_pydicom_cases_per_s']:9.1f} cases/s")
        print(f"  first epoch (decode + cache) {report['first_epoch_cases_per_s']:9.1f} cases/s")
        print(f"  cached epochs                {report['cached_epoch_cases_per_s']:9.1f} cases/s")
        print("ratios:")
        for name, value in report["ratios"].items():
            print(f"  {name:<28} {value:7.2f}x")
    return report


if __name__ == "__main__":
    main()
