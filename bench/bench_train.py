"""Training loop (DESIGN.md §12): images/s of the runner's loop (``runner.train.train``:
batches from the prepared arrays, augmentation, normalisation, mixed precision,
clipping, schedule, progress callbacks) against the same model and batch size on
synthetic tensors already on the device (forward, loss, backward, step: the
bound no data path can beat).

    python -m bench.bench_train [--network resnet10t] [--image-size 128] [--batch 32]
                                [--cases 256] [--epochs 3] [--steps 20] [--workers 0] [--json]

The loop's rate is the per-epoch training throughput it reports itself
(evaluation excluded), the median over the epochs after the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runner.data import PreparedData
from runner.job import pick_device
from runner.model import build_model
from runner.recipe import optimizer_for
from runner.train import ProgressUpdate, TrainOptions, _precision, train
from schemas.spec import TrainingSpec


def _spec(args: argparse.Namespace) -> TrainingSpec:
    return TrainingSpec.model_validate({
        "task_id": "bench-train", "tenant": "bench", "name": "bench", "flow": "general",
        "task_type": "classification",
        "dataset": {"dataset_id": "bench", "manifest_key": "datasets/bench/manifest.json",
                    "sha256": "0" * 64, "annotation_type": "single_label", "modality": "CT",
                    "num_cases": args.cases},
        "classes": ["normal", "finding"], "label_mode": "single_label",
        "preprocessing": {"image_size": args.image_size, "channels": 3, "mean": [0.5],
                          "std": [0.5]},
        "model": {"entry_id": args.network, "builder": "timm", "network": args.network,
                  "pretrained": False, "num_classes": 2, "in_chans": 3},
        "hyperparameters": {"epochs": args.epochs, "batch_size": args.batch,
                            "image_size": args.image_size, "augmentation": "light"},
        "resources": {"gpus": 1},
    })


def random_data(cases: int, size: int, val: int = 1,
                cache: Path | None = None) -> PreparedData:
    """Random images, every case but ``val`` in train: the loop, not the evaluation, is
    timed. With ``cache`` the images are a memory-mapped ``x.npy`` there, as the runner's
    cache is (each DDP rank maps it itself); else in memory."""
    n = cases + val
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (n, 3, size, size), dtype=np.uint8)
    if cache is not None:
        cache.mkdir(parents=True)
        np.save(cache / "x.npy", x)
        x = np.load(cache / "x.npy", mmap_mode="r")
    return PreparedData(
        x=x, y=rng.integers(0, 2, n).astype(np.int64), case_ids=[f"c{i}" for i in range(n)],
        patient_ids=[None] * n, split=np.array(["train"] * cases + ["val"] * val),
        classes=["normal", "finding"], label_mode="single_label",
        cache_path=cache or Path("/nonexistent"), cache_hit=True)


def steady_rate(run: Callable[[Callable[[ProgressUpdate], None]], object]) -> float:
    """Images/s of a training run given its progress callback: the rate it reports
    itself at each epoch's last step, the median over the epochs after the first."""
    rates: dict[int, float] = {}

    def on_progress(u: ProgressUpdate) -> None:
        if not u.epoch_end and u.throughput is not None:
            rates[u.epoch] = u.throughput  # the last step's value: the whole epoch's rate

    run(on_progress)
    later = [r for e, r in rates.items() if e > 1] or list(rates.values())
    return statistics.median(later)


def loop_rate(spec: TrainingSpec, args: argparse.Namespace, device: torch.device) -> float:
    data = random_data(args.cases, args.image_size)
    options = TrainOptions(workers=args.workers, compile=args.compile)
    return steady_rate(lambda progress: train(spec, data, device, progress, lambda: False,
                                              options=options))


class Bound:
    """Same model, batch, optimizer and precision; inputs already on the device. Built
    (and, with ``--compile``, compiled) once, timed as often as asked."""

    def __init__(self, spec: TrainingSpec, args: argparse.Namespace,
                 device: torch.device) -> None:
        self.args, self.device = args, device
        model: nn.Module = build_model(spec.model).to(device).train()
        self.amp, _ = _precision(device, spec.hyperparameters)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        self.net = torch.compile(model) if args.compile else model
        self.opt = optimizer_for(model, spec.hyperparameters)
        self.x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
        self.y = torch.randint(0, 2, (args.batch,), device=device)
        self.loss_fn = nn.CrossEntropyLoss()

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16,
                            enabled=self.amp is not None):
            loss = self.loss_fn(self.net(self.x).float(), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def rate(self) -> float:
        for _ in range(3):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(self.args.steps):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return self.args.steps * self.args.batch / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_train", description=__doc__)
    parser.add_argument("--network", default="resnet10t")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cases", type=int, default=256, help="training cases per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of the bound")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--compile", action="store_true", help="torch.compile both")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(pick_device(args.device))
    spec = _spec(args)
    # The bound is timed before and after the loop and the better kept: on a shared
    # machine a single timing is at the mercy of whatever else runs at that moment.
    bench = Bound(spec, args, device)
    first = bench.rate()
    loop = loop_rate(spec, args, device)
    bound = max(first, bench.rate())
    report = {"device": str(device), "network": args.network, "image_size": args.image_size,
              "batch": args.batch, "workers": args.workers, "compile": args.compile,
              "bound_images_per_s": bound, "loop_images_per_s": loop,
              "ratios": {"runner loop / synthetic on device": loop / bound}}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"device {device}, {args.network} at {args.image_size}px, batch {args.batch}")
        print(f"  synthetic tensors on device (bound) {bound:9.1f} images/s")
        print(f"  runner loop                         {loop:9.1f} images/s")
        print(f"ratios:\n  runner loop / synthetic on device   {loop / bound:7.2f}x")
    return report


if __name__ == "__main__":
    main()
