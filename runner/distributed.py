"""Training over N local processes (DESIGN.md §8): ``resources.gpus: N > 1``.

The job thread stays the supervisor, as with one process: it spawns N ranks
(``torch.multiprocessing``, spawn; NCCL over N CUDA devices, gloo over N CPU
processes), relays what rank 0 asks and what the attempt decides, and waits.

* Progress: rank 0 sends each ``ProgressUpdate``; the supervisor hands it to
  ``on_progress`` (the rate-limited reporter, which asks ownership first).
* Checkpoints: rank 0 serialises the state into the attempt's work directory
  and asks; the supervisor asks the fence (``Attempt.owns``, fail closed),
  uploads (``Checkpointer.put``: the attempt's own key, runner/checkpoint.py) and
  answers. No other rank ever writes.
* Stopping: ``should_stop`` (cancel, shutdown, fence) is polled every
  ``POLL_S`` into a shared flag; rank 0 reads it at every step and broadcasts
  it (runner.rank_group), so every rank stops at the same step, rank 0 after
  its checkpoint.
* The end: rank 0 writes its result (best weights, metrics, history, the
  evaluation for the plots) to a file; the supervisor rebuilds the
  ``TrainResult`` and the job writes the artifacts as with one process.

A rank that dies (signal, exception, collective timeout) fails the attempt as a
``TransientError`` (``rank_failed``; a ``PermanentError`` raised in a rank stays
permanent). The supervisor kills the whole group on every way out, and each
rank exits when its parent is gone, so a kill -9 of the runner leaves no rank
behind. Ranks ignore SIGINT and SIGTERM: the runner turns them into
``shutdown``, which stops the group with a checkpoint.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import timedelta
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from infra.errors import PermanentError, TransientError
from infra.store import ObjectStore
from runner.checkpoint import Checkpointer, State, stamped
from runner.data import PreparedData
from runner.model import build_model
from runner.rank_group import REASONS, ProcessGroup, reason_code
from runner.tasks import strategy_for
from runner.train import ProgressUpdate, TrainingStopped, TrainOptions, TrainResult, train
from schemas.spec import ModelSpec, TrainingSpec

__all__ = ["train_group", "world_size"]

log = logging.getLogger("radtrain.runner.distributed")
POLL_S = 0.1
GRACE_S = 30.0
"""How long the ranks may take to exit once the outcome is known (then: killed)."""
REPLY_TIMEOUT_S = 600.0
"""How long rank 0 waits for the supervisor's answer to a checkpoint (then: it fails)."""


def world_size(spec: TrainingSpec, device: str, cpu_max: int) -> int:
    """How many processes train the task; a request this runner cannot serve is permanent."""
    n = spec.resources.gpus
    if n <= 1:
        return 1
    if device == "cuda":
        have = torch.cuda.device_count()
        if n > have:
            raise PermanentError("resources_unavailable", f"resources.gpus is {n}; this runner "
                                 f"has {have} CUDA device(s)")
    elif n > cpu_max:
        raise PermanentError("resources_unavailable", f"resources.gpus is {n}; this CPU runner "
                             f"trains over at most {cpu_max} processes (ddp_cpu_processes_max)")
    bs = spec.hyperparameters.batch_size
    if bs < 2 * n:
        raise PermanentError("batch_too_small", f"batch_size {bs} cannot give each of "
                             f"{n} processes two samples per step")
    return n


@dataclass(frozen=True)
class Launch:
    """What every rank is given (pickled into it): no store, no connection."""

    spec: TrainingSpec
    data: PreparedData
    mapped: bool
    """``data.x`` (and masks) left out: each rank maps the cache itself."""
    device: str
    world: int
    work_dir: Path
    workers: int
    compile: bool
    timeout_s: float
    parent_pid: int
    resume: Path | None
    weights: Path | None

    @property
    def rendezvous(self) -> str:
        return (self.work_dir / "rendezvous").as_uri()

    @property
    def result(self) -> Path:
        return self.work_dir / "result.pt"


def _bare(model: ModelSpec) -> ModelSpec:
    return model.model_copy(update={"pretrained": False, "weights_key": None,
                                    "weights_sha256": None})


def _portable(data: PreparedData) -> tuple[PreparedData, bool]:
    if not (isinstance(data.x, np.memmap) and (data.cache_path / "x.npy").is_file()):
        return data, False
    if data.masks is not None and not isinstance(data.masks, np.memmap):
        return data, False
    empty = np.empty((0,), np.uint8)
    return replace(data, x=empty, masks=None if data.masks is None else empty), True


def _attach(launch: Launch) -> PreparedData:
    data = launch.data
    if not launch.mapped:
        return data
    masks = None
    if data.masks is not None:
        masks = np.load(data.cache_path / "masks.npy", mmap_mode="r")
    return replace(data, x=np.load(data.cache_path / "x.npy", mmap_mode="r"), masks=masks)


def _launch(spec: TrainingSpec, data: PreparedData, device: str, world: int,
            store: ObjectStore | None, options: TrainOptions, work: Path,
            timeout_s: float) -> Launch:
    """Write what the ranks load (resume state, resolved weights) into ``work``."""
    resume = weights = None
    if options.resume is not None:
        resume = work / "resume.pt"
        torch.save(options.resume, resume)
    if spec.model.pretrained or spec.model.weights_key is not None:
        with torch.random.fork_rng(devices=[]):  # a fresh head's init must not move ours
            torch.manual_seed(spec.hyperparameters.seed)
            state = build_model(spec.model, store).state_dict()
        weights = work / "weights.pt"
        torch.save(state, weights)
    portable, mapped = _portable(data)
    return Launch(spec, portable, mapped, device, world, work, options.workers,
                  options.compile, timeout_s, os.getpid(), resume, weights)


def train_group(spec: TrainingSpec, data: PreparedData, device: str, world: int,
                on_progress: Callable[[ProgressUpdate], None],
                should_stop: Callable[[], object], *, store: ObjectStore | None,
                options: TrainOptions, work_dir: Path, timeout_s: float) -> TrainResult:
    """``train`` over ``world`` processes, supervised from the calling thread."""
    work = (work_dir / f"ddp-{uuid.uuid4().hex[:8]}").resolve()
    work.mkdir(parents=True)
    ctx = tmp.get_context("spawn")
    events, replies, flag = ctx.Queue(), ctx.Queue(), ctx.Value("i", 0, lock=False)
    procs: list[BaseProcess] = []
    try:
        launch = _launch(spec, data, device, world, store, options, work, timeout_s)
        procs = [ctx.Process(target=rank_main, args=(rank, launch, events, replies, flag),
                             name=f"radtrain-rank-{rank}") for rank in range(world)]
        for proc in procs:
            proc.start()
        log.info("task %s: %d ranks on %s (pids %s)", spec.task_id, world, device,
                 [p.pid for p in procs])
        sup = _Supervisor(procs, events, replies, flag, on_progress, should_stop, options)
        sup.run()
        return _result(spec, data, launch, sup.verdict())
    finally:
        _kill(procs)
        events.close()
        replies.close()
        shutil.rmtree(work, ignore_errors=True)


def _kill(procs: list[BaseProcess]) -> None:
    started = [p for p in procs if p.pid is not None]
    for proc in started:
        if proc.is_alive():
            proc.kill()
    for proc in started:
        proc.join(timeout=10.0)


class _Supervisor:
    """The calling thread's loop: relay, answer, watch, until every rank is gone."""

    def __init__(self, procs: list[BaseProcess], events: Any, replies: Any, flag: Any,
                 on_progress: Callable[[ProgressUpdate], None],
                 should_stop: Callable[[], object], options: TrainOptions) -> None:
        self.procs, self.events, self.replies, self.flag = procs, events, replies, flag
        self.on_progress, self.should_stop, self.sink = on_progress, should_stop, \
            options.checkpointer
        self.outcome: tuple[Any, ...] | None = None
        self.errors: list[tuple[Any, ...]] = []

    def run(self) -> None:
        ended_at: float | None = None
        while True:
            if self.flag.value == 0:
                self.flag.value = reason_code(self.should_stop())
            self.receive(POLL_S)
            codes = [p.exitcode for p in self.procs]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            if self.outcome is not None:
                ended_at = ended_at or time.monotonic()
                if time.monotonic() - ended_at > GRACE_S:
                    log.warning("ranks still alive %.0fs after the outcome; killed", GRACE_S)
                    break
        while self.receive(0.2):  # what the ranks sent just before they exited
            pass

    def receive(self, timeout: float) -> bool:
        try:
            msg = self.events.get(timeout=timeout)
        except queue.Empty:
            return False
        kind = msg[0]
        if kind == "progress":
            self.on_progress(msg[1])
        elif kind == "checkpoint":
            path, epoch = Path(msg[1]), int(msg[2])
            ok = False
            try:
                ok = isinstance(self.sink, Checkpointer) and self.sink.put(path, epoch)
            finally:
                self.replies.put(ok)
        elif kind == "error":
            self.errors.append(msg)
        else:
            self.outcome = msg
        return True

    def verdict(self) -> tuple[Any, ...]:
        for _, _rank, code, message, permanent in self.errors:
            if permanent:
                raise PermanentError(code, message)
        failed = [(i, p.exitcode) for i, p in enumerate(self.procs)
                  if p.exitcode not in (None, 0)]
        if self.errors or failed or self.outcome is None:
            detail = "; ".join(f"rank {e[1]}: {e[3]}" for e in self.errors) or \
                f"ranks (rank, exit code) {failed or 'ended without a result'}"
            raise TransientError("rank_failed", f"distributed training failed: {detail}")
        if self.outcome[0] == "stopped":
            raise TrainingStopped(self.outcome[1], self.outcome[2])
        return self.outcome


def _result(spec: TrainingSpec, data: PreparedData, launch: Launch,
            outcome: tuple[Any, ...]) -> TrainResult:
    """The ``TrainResult`` rank 0 left: its own file in our work dir, so a full load."""
    saved = torch.load(launch.result, map_location="cpu", weights_only=False)
    with torch.random.fork_rng(devices=[]):
        model = build_model(_bare(spec.model))
    model.load_state_dict(saved["state"])
    strategy = strategy_for(spec, data, torch.device("cpu"))
    return TrainResult(model.eval(), saved["metrics"], saved["history"], saved["best_epoch"],
                       saved["seconds"], strategy, saved["evaluation"], saved["samples"],
                       saved["example"], saved["resumed"])


# --- inside a rank ------------------------------------------------------------------


class _Relay:
    """Rank 0's checkpointer: serialise here, let the supervisor fence and upload."""

    def __init__(self, launch: Launch, events: Any, replies: Any) -> None:
        self.launch, self.events, self.replies = launch, events, replies
        self.saved_epoch: int | None = None

    def save(self, state: State) -> bool:
        fd, name = tempfile.mkstemp(dir=self.launch.work_dir, suffix=".pt")
        os.close(fd)
        torch.save(stamped(state, self.launch.spec), name)
        epoch = int(state["epoch"])
        self.events.put(("checkpoint", name, epoch))
        ok = bool(self.replies.get(timeout=REPLY_TIMEOUT_S))
        if ok:
            self.saved_epoch = epoch
        return ok


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(3)  # the supervisor is gone (kill -9 of the runner): so are we

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _load(path: Path | None) -> Any:
    return None if path is None else torch.load(path, map_location="cpu", weights_only=True)


def _train_rank(rank: int, launch: Launch, device: torch.device, events: Any, replies: Any,
                flag: Any) -> None:
    group = ProcessGroup(rank, launch.world, device)
    main = rank == 0
    options = TrainOptions(workers=launch.workers, compile=launch.compile,
                           checkpointer=_Relay(launch, events, replies) if main else None,
                           resume=_load(launch.resume), initial_weights=_load(launch.weights),
                           group=group)

    def report(update: ProgressUpdate) -> None:
        if main:
            events.put(("progress", update))

    result = train(launch.spec, _attach(launch), device, report,
                   lambda: group.agree(lambda: REASONS[flag.value] or None), options=options)
    if main:
        torch.save({"state": result.model.state_dict(), "metrics": result.metrics,
                    "history": result.history, "best_epoch": result.best_epoch,
                    "seconds": result.seconds, "evaluation": result.evaluation,
                    "samples": result.samples, "example": result.example,
                    "resumed": result.resumed_from_epoch}, launch.result)
        events.put(("done",))


def rank_main(rank: int, launch: Launch, events: Any, replies: Any, flag: Any) -> None:
    """One spawned rank: join the group, train, tell the supervisor how it ended."""
    _watch_parent(launch.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cuda = launch.device == "cuda"
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // launch.world))
    dist.init_process_group("nccl" if cuda else "gloo", init_method=launch.rendezvous,
                            rank=rank, world_size=launch.world,
                            timeout=timedelta(seconds=launch.timeout_s))
    code = 0
    try:
        _train_rank(rank, launch, device, events, replies, flag)
    except TrainingStopped as exc:
        if rank == 0:
            events.put(("stopped", exc.reason, exc.checkpoint_epoch))
    except PermanentError as exc:
        events.put(("error", rank, exc.code, exc.message, True))
        code = 1
    except BaseException as exc:
        events.put(("error", rank, "rank_failed", repr(exc), False))
        code = 1
    finally:
        with suppress(Exception):
            dist.destroy_process_group()
    events.close()
    events.join_thread()  # flushed before the exit code says we are done
    os._exit(code)
