"""The GPU check of DDP (issue 13 item 4, runner/distributed.py): NCCL over every CUDA
device of the machine, against one process on one device, as the CPU test
(tests/integration/test_runner_ddp.py) does with two gloo processes.

    python -m bench.device_ddp [--json]

Three parts, each printed with its figures:

1. equal: the same seed and spec (timm's ``test_efficientnet_gn``, GroupNorm, 32 px,
   real synthetic DICOM through ``prepare``) trained by ``train`` in this process and by
   ``train_group`` over N NCCL ranks; per-epoch losses and final weights compared.
   The weights decide (``WEIGHT_TOL``, the CPU test's): a wrong shard, a missing
   gradient average or a resume from the wrong position moves them by 1e-3 and more.
   Losses are evaluated under bf16 autocast, whose 8-bit mantissa rounds a loss near
   1 to steps of 0.004: weights equal to 1e-5 gave validation losses 0.007 apart on
   the first H200 run, so a loss may differ by ``LOSS_TOL``.
2. resume: a cancel at step 6 stops every rank with a checkpoint of that position
   (through the supervisor's ``Checkpointer``); a new group resumes from it and ends
   within the same tolerance of the uninterrupted run.
3. rate: ResNet-50 at 224 px, bf16, from a memory-mapped cache, images/s of ``train``
   in-process against ``train_group`` over N ranks (per-rank batch = batch / N): the
   cost of the process group, checkpoint relay and progress relay.

A machine with one GPU runs a group of one rank: the NCCL path end to end (process
group, DDP wrapper, rank 0's checkpoints and result), not the speed-up of several.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.bench_train import random_data, steady_rate
from infra.store import LocalStore
from radtrain.synthetic.ct import DEMO_WINDOWS, generate_dicom_dataset, synthetic_manifest
from runner.checkpoint import Checkpointer
from runner.data import PreparedData, prepare
from runner.distributed import train_group
from runner.train import ProgressUpdate, TrainingStopped, TrainOptions, TrainResult, train
from schemas.dataset import DatasetManifest
from schemas.spec import TrainingSpec

WEIGHT_TOL = 2e-4
LOSS_TOL = 1e-2
DATASET = "ds-ddp"


def _spec(sha: str, n: int, network: str, size: int, epochs: int, batch: int,
          gpus: int, task_id: str) -> TrainingSpec:
    return TrainingSpec.model_validate({
        "task_id": task_id, "tenant": "bench", "name": "ddp", "flow": "general",
        "task_type": "classification",
        "dataset": {"dataset_id": DATASET, "manifest_key": f"datasets/{DATASET}/manifest.json",
                    "sha256": sha, "annotation_type": "single_label", "modality": "CT",
                    "num_cases": n},
        "classes": ["normal", "finding"], "label_mode": "single_label",
        "preprocessing": {"image_size": size, "channels": 3, "windows": DEMO_WINDOWS,
                          "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "model": {"entry_id": network, "builder": "timm", "network": network,
                  "pretrained": False, "num_classes": 2, "in_chans": 3},
        "hyperparameters": {"epochs": epochs, "batch_size": batch, "image_size": size,
                            "augmentation": "none", "seed": 7},
        "resources": {"gpus": gpus},
    })


class World:
    """40 synthetic CT files in a LocalStore, and the group that trains on them (the CPU
    test, tests/integration/test_runner_ddp.py, uses it with two gloo ranks)."""

    def __init__(self, root: Path, device: str, gpus: int, dataset: str = DATASET) -> None:
        self.root, self.device, self.gpus = root, device, gpus
        self.store = LocalStore(root / "store")
        cases = generate_dicom_dataset(root / "gen", n_cases=40, seed=5, size=80)
        for c in cases:
            self.store.put_file(f"datasets/{dataset}/cases/{c.file}", root / "gen" / c.file)
        raw = json.dumps(synthetic_manifest(dataset, "default", cases)).encode()
        self.sha = self.store.put_bytes(f"datasets/{dataset}/manifest.json", raw).sha256
        self.manifest = DatasetManifest.model_validate_json(raw)

    @classmethod
    def opened(cls, root: Path, device: str, gpus: int, dataset: str = DATASET) -> World:
        """The world another process made in ``root`` (a launcher a test kills)."""
        world = cls.__new__(cls)
        world.root, world.device, world.gpus = root, device, gpus
        world.store = LocalStore(root / "store")
        raw = world.store.get_bytes(f"datasets/{dataset}/manifest.json")
        world.manifest = DatasetManifest.model_validate_json(raw)
        world.sha = hashlib.sha256(raw).hexdigest()
        return world

    def spec(self, task_id: str) -> TrainingSpec:
        return _spec(self.sha, 40, "test_efficientnet_gn", 32, 3, 8, self.gpus, task_id)

    def data(self, spec: TrainingSpec) -> PreparedData:
        return prepare(spec, self.manifest, self.store, self.root / "cache")

    def ckpt(self, spec: TrainingSpec, guard: Any = lambda: True,
             attempt: int = 1) -> Checkpointer:
        """Attempt ``attempt``'s: it writes its own key, reads the older attempts'."""
        return Checkpointer(self.store, spec, self.root / "ckpt" / spec.task_id, guard,
                            attempt=attempt)

    def group(self, spec: TrainingSpec, on_progress: Any, should_stop: Any,
              options: TrainOptions) -> TrainResult:
        return train_group(spec, self.data(spec), self.device, self.gpus, on_progress, should_stop,
                           store=self.store, options=options, work_dir=self.root / "work",
                           timeout_s=300)


def _compare(got: TrainResult, ref: TrainResult) -> dict[str, Any]:
    losses = [max(abs(a["train_loss"] - b["train_loss"]), abs(a["val_loss"] - b["val_loss"]))
              for a, b in zip(got.history, ref.history, strict=True)]
    mine, theirs = got.model.state_dict(), ref.model.state_dict()
    worst = max(float((mine[k].float().cpu() - theirs[k].float().cpu()).abs().max())
                for k in theirs)
    ok = (len(got.history) == len(ref.history) and max(losses) < LOSS_TOL
          and worst < WEIGHT_TOL)
    return {"epochs": len(got.history), "largest_loss_difference": max(losses),
            "largest_weight_difference": worst, "val_loss": got.metrics["val_loss"],
            "reference_val_loss": ref.metrics["val_loss"], "within_tolerance": ok}


def check_equal_and_resume(world: World) -> dict[str, Any]:
    spec = world.spec("ddp-ref")
    one = train(spec, world.data(spec), torch.device(world.device), lambda u: None,
                lambda: False)
    group = world.group(world.spec("ddp-equal"), lambda u: None, lambda: False,
                        TrainOptions(checkpointer=world.ckpt(world.spec("ddp-equal"))))
    spec = world.spec("ddp-cancel")
    updates: list[ProgressUpdate] = []

    def should_stop() -> str | None:
        return "cancelled" if any(u.step >= 6 for u in updates if not u.epoch_end) else None

    stopped: dict[str, Any] = {}
    try:
        world.group(spec, updates.append, should_stop, TrainOptions(checkpointer=world.ckpt(spec)))
    except TrainingStopped as exc:
        stopped = {"reason": exc.reason, "checkpoint_epoch": exc.checkpoint_epoch}
    state = world.ckpt(spec, attempt=2).load()
    resumed: dict[str, Any] = {"stopped": stopped, "state_found": state is not None}
    if state is not None:
        resumed["checkpoint_position"] = [state["epoch"], state["step"]]
        again = world.group(spec, lambda u: None, lambda: False,
                            TrainOptions(checkpointer=world.ckpt(spec, attempt=2), resume=state))
        resumed.update(_compare(again, one), resumed_from_epoch=again.resumed_from_epoch)
    return {"equal": _compare(group, one), "resume": resumed}


def check_rate(world: World, args: argparse.Namespace) -> dict[str, Any]:
    cases, batch, size = args.cases, args.batch, args.image_size
    data = random_data(cases, size, val=8, cache=world.root / "rate-cache")
    spec = _spec("0" * 64, cases, args.network, size, 3, batch, world.gpus, "ddp-rate")
    options = TrainOptions(workers=args.workers)
    one = steady_rate(lambda p: train(spec, data, torch.device(world.device), p,
                                      lambda: False, options=options))
    group = steady_rate(lambda p: train_group(spec, data, world.device, world.gpus, p,
                                              lambda: False, store=None, options=options,
                                              work_dir=world.root / "work", timeout_s=300))
    return {"network": args.network, "image_size": size, "batch": batch, "ranks": world.gpus,
            "one_process_images_per_s": one, "group_images_per_s": group,
            "ratio_group_over_one": group / one}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.device_ddp", description=__doc__)
    parser.add_argument("--cases", type=int, default=3072)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--network", default="resnet50", help="of the rate part")
    parser.add_argument("--image-size", type=int, default=224, help="of the rate part")
    parser.add_argument("--cpu-ranks", type=int, default=0,
                        help="run on CPU over this many gloo ranks (a smoke run of the script)")
    parser.add_argument("--skip-rate", action="store_true", help="the checks alone")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.cpu_ranks:
        device, ranks, names = "cpu", args.cpu_ranks, ["cpu"]
    elif torch.cuda.is_available():
        device, ranks = "cuda", torch.cuda.device_count()
        names = [torch.cuda.get_device_name(i) for i in range(ranks)]
    else:
        raise SystemExit("device_ddp needs CUDA devices (or --cpu-ranks N)")
    report: dict[str, Any] = {"devices": names, "ranks": ranks,
                              "backend": "nccl" if device == "cuda" else "gloo"}
    with tempfile.TemporaryDirectory(prefix="device-ddp-") as tmp:
        world = World(Path(tmp), device, ranks)
        started = time.perf_counter()
        report.update(check_equal_and_resume(world))
        report["checks_s"] = time.perf_counter() - started
        if not args.skip_rate:
            report["rate"] = check_rate(world, args)
    print(json.dumps(report, indent=2, default=str) if args.json else report)
    return report


if __name__ == "__main__":
    main()
