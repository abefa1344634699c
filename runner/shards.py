"""Datasets larger than the runner's cache budget (issue 16): shards shared through the store.

``prepare_within_budget`` comes here, instead of ``prepare`` (runner/data.py), when the
decoded cache would not fit in ``runner_cache_budget_bytes``. The cases are decoded once
per (dataset sha256 x preprocessing x targets), the same ``cache_key`` as the local
cache, into shards of ``per_shard`` cases, each uploaded to the store:

    cache/<cache_key>/k<K>-v1-<layout>/shard-00000.<token>.x.npy      (uint8 N, C, H, W)
    cache/<cache_key>/k<K>-v1-<layout>/shard-00000.<token>.masks.npy  (segmentation)
    cache/<cache_key>/k<K>-v1-<layout>/shard-00000.json     its arrays' keys, sha256, targets
    cache/<cache_key>/k<K>-v1-<layout>/index.json           every shard's json: written last

(K cases a shard, ``<layout>`` a digest of which case goes where: runners whose plans
differ never mix their shards.) K comes from the budget (shards of at most a tenth of it,
and at most 256 MiB, so every runner with 2.5 GiB or more agrees); a runner also takes a
complete set of its layout with smaller shards than its own, built by a smaller budget.

Objects are written atomically (``infra.store``) and each ``.json`` only after
its arrays, ``index.json`` only after every shard: a runner that finds the index
reuses the whole set; one that finds a partial set (a builder crashed) keeps the
shards whose sidecar is there and whose arrays have the sizes it names, and builds
the others; a shard without its sidecar is never read. Two runners building at once
decode the same shards twice: each writer names its arrays with its own token, so a
sidecar always names the arrays written with it (whichever sidecar is written last
wins; the other's arrays are left unused). A downloaded shard is checked against
the index's sha256.
Training reads the shards through a disk cache bounded by the budget
(``runner/shard_cache.py``), in a shard-aware order (``runner/loader.py``).

Classification knows its split before any pixel is decoded (labels only), so its
shards hold the train cases first, then validation, then test: an evaluation pass
reads the validation shards alone. Boxes and masks learn their split from the
decoded targets; their shards follow the manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from infra.store import ObjectNotFound, ObjectStore
from runner.data import (
    PreparedData,
    Progress,
    _Arrays,
    _build,
    _check_compatible,
    cache_key,
    prepare,
)
from runner.shard_cache import BudgetTooSmall, ShardCache
from runner.split import assign_splits, encode_labels
from runner.targets import presence_from_boxes, presence_from_masks
from schemas.dataset import DatasetManifest
from schemas.spec import TrainingSpec

SHARD_MAX_BYTES = 256 << 20
"""A shard's arrays at most this (or a tenth of the budget, when that is smaller)."""
SHARDS_IN_BUDGET = 10
"""The budget holds this many shards: a window of WINDOW, the batch crossing into the
next window, and the one being fetched ahead."""
BUILD_MAX_BYTES = 1 << 30
"""Most decoded bytes held in memory while building (several shards decoded at once; memory,
not the disk budget: each shard goes to the bounded disk cache as it is uploaded)."""
WINDOW = 4
"""Shards whose training cases are shuffled together (runner/loader.py epoch_order)."""
LAYOUT_VERSION = 1
SPLIT_RANK = {"train": 0, "val": 1, "test": 2}

Build = Callable[[TrainingSpec, DatasetManifest, ObjectStore, Progress | None, int], _Arrays]
"""runner/data.py ``_build``: decodes the cases of a manifest (here: one shard's)."""


def case_bytes(spec: TrainingSpec) -> int:
    """Decoded bytes of one case: its uint8 channels, and its mask for segmentation."""
    p = spec.preprocessing
    pixels = p.image_size * p.image_size
    return p.channels * pixels + (pixels if spec.label_mode == "masks" else 0)


def over_budget(spec: TrainingSpec, num_cases: int, budget_bytes: int) -> bool:
    return num_cases * case_bytes(spec) > budget_bytes


@dataclass(frozen=True)
class ShardPlan:
    """Which case goes into which shard; the same for every runner with the same inputs."""

    per_shard: int
    layout: np.ndarray
    """Case indices (manifest order) in shard order: shard i = layout[i*K:(i+1)*K]."""

    @property
    def num_shards(self) -> int:
        return -(-len(self.layout) // self.per_shard)

    def cases(self, shard: int) -> np.ndarray:
        return self.layout[shard * self.per_shard:(shard + 1) * self.per_shard]

    def prefix(self, key: str) -> str:
        return f"cache/{key}/k{self.per_shard}-{self.layout_id()}"

    def layout_id(self) -> str:
        digest = hashlib.sha256(np.ascontiguousarray(self.layout, np.int64).tobytes())
        return f"v{LAYOUT_VERSION}-{digest.hexdigest()[:12]}"


def plan_shards(spec: TrainingSpec, num_cases: int, budget_bytes: int,
                split: np.ndarray | None = None) -> ShardPlan:
    """Shards of at most min(SHARD_MAX_BYTES, budget / SHARDS_IN_BUDGET); grouped by split
    when the split is known before decoding."""
    one = case_bytes(spec)
    if budget_bytes < SHARDS_IN_BUDGET * one:
        raise BudgetTooSmall(f"runner_cache_budget_bytes={budget_bytes} is under "
                             f"{SHARDS_IN_BUDGET} decoded cases ({one} bytes each)")
    per_shard = max(1, min(SHARD_MAX_BYTES, budget_bytes // SHARDS_IN_BUDGET) // one)
    if split is None:
        layout = np.arange(num_cases, dtype=np.int64)
    else:
        rank = np.array([SPLIT_RANK.get(str(s), 3) for s in split])
        layout = np.argsort(rank, kind="stable").astype(np.int64)
    return ShardPlan(per_shard, layout)


@dataclass
class ShardSet:
    """A complete set (its index read), read through the runner's bounded disk cache."""

    index: dict[str, Any]
    plan: ShardPlan
    cache: ShardCache
    shape: tuple[int, int, int]
    """(C, H, W) of one case."""
    position: np.ndarray = field(init=False)
    """Case index -> its place in ``plan.layout``."""

    def __post_init__(self) -> None:
        self.position = np.empty_like(self.plan.layout)
        self.position[self.plan.layout] = np.arange(len(self.plan.layout))

    def shard_of(self, cases: np.ndarray) -> np.ndarray:
        return np.asarray(self.position[np.asarray(cases, np.int64)] // self.plan.per_shard)

    def load(self, shard: int, name: str) -> np.ndarray:
        """Shard ``shard``'s array ``name``, memory-mapped from the local cache."""
        obj = self.index["shards"][shard]["objects"][name]
        try:
            return np.load(self.cache.get(obj["key"], obj["sha256"], obj["size"]), mmap_mode="r")
        except FileNotFoundError:  # evicted between get and open (a fetch for another set)
            return np.load(self.cache.get(obj["key"], obj["sha256"], obj["size"]), mmap_mode="r")

    def prefetch(self, shard: int) -> None:
        for obj in self.index["shards"][shard]["objects"].values():
            self.cache.prefetch(obj["key"], obj["sha256"], obj["size"])

    def gather(self, cases: np.ndarray, name: str) -> np.ndarray:
        """The rows of ``cases`` (any order), one shard at a time."""
        cases = np.asarray(cases, np.int64).reshape(-1)
        pos = self.position[cases]
        sid, row = pos // self.plan.per_shard, pos % self.plan.per_shard
        tail = self.shape if name == "x" else self.shape[1:]
        out = np.empty((len(cases), *tail), np.uint8)
        for s in np.unique(sid):
            hit = sid == s
            out[hit] = self.load(int(s), name)[row[hit]]
        return out


class ShardedArray:
    """``PreparedData.x`` (or ``.masks``) of a sharded set: indexing gathers from shards."""

    def __init__(self, shards: ShardSet, name: str, num_cases: int) -> None:
        self.shards, self.name = shards, name
        tail = shards.shape if name == "x" else shards.shape[1:]
        self.shape: tuple[int, ...] = (num_cases, *tail)
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)
        self.nbytes = int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> np.ndarray:
        if isinstance(idx, slice):
            idx = np.arange(self.shape[0])[idx]
        if np.isscalar(idx):
            return self.shards.gather(np.array([idx]), self.name)[0]
        return self.shards.gather(np.asarray(idx), self.name)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[np.arange(self.shape[0])]
        return whole if dtype is None else whole.astype(dtype)


def prepare_within_budget(spec: TrainingSpec, manifest: DatasetManifest, store: ObjectStore,
                          cache_dir: Path, budget_bytes: int, progress: Progress | None = None,
                          *, workers: int = 0) -> PreparedData:
    """The runner's ``prepare``: the local cache when it fits in ``budget_bytes``
    (``runner_cache_budget_bytes``), shards shared through the store when it does not."""
    if not over_budget(spec, len(manifest.cases), budget_bytes):
        return prepare(spec, manifest, store, cache_dir, progress, workers=workers)
    _check_compatible(spec, manifest)
    return prepare_sharded(spec, manifest, store, cache_dir, budget_bytes, progress, workers)


def prepare_sharded(spec: TrainingSpec, manifest: DatasetManifest, store: ObjectStore,
                    cache_dir: Path, budget_bytes: int, progress: Progress | None = None,
                    workers: int = 0, build: Build | None = None) -> PreparedData:
    """``prepare`` for a dataset over the budget: reuse or build the shared set, then read
    it through a local cache of at most ``budget_bytes``."""
    cases, k = manifest.cases, len(spec.classes)
    classification = spec.label_mode in ("single_label", "multi_label")
    labels = split = None
    if classification:  # labels and split before any download, as prepare does
        labels = encode_labels(cases, spec.classes, spec.label_mode, spec.class_map)
        split = assign_splits(cases, labels)
    plan = plan_shards(spec, len(cases), budget_bytes, split)
    key = cache_key(spec)
    cache = ShardCache(cache_dir / "shards", budget_bytes, store)
    plan, index = find_set(store, key, plan)
    hit = index is not None
    if index is None:
        index = build_shards(spec, manifest, store, cache, plan, plan.prefix(key), progress,
                             workers, build or _build)
    elif progress is not None:
        progress(len(cases), len(cases))
    p = spec.preprocessing
    shards = ShardSet(index, plan, cache, (p.channels, p.image_size, p.image_size))
    boxes = None
    if labels is not None:
        y = labels
    else:
        per_case = [c for s in index["shards"] for c in s["targets"]]
        at = np.empty(len(cases), np.int64)
        at[plan.layout] = np.arange(len(cases))
        ordered = [per_case[i] for i in at]
        if spec.label_mode == "boxes":
            boxes = [np.asarray(b, np.float32).reshape(-1, 5) for b in ordered]
            y = presence_from_boxes(boxes, k)
        else:
            y = np.asarray(ordered, np.float32).reshape(len(cases), k)
    return PreparedData(
        x=ShardedArray(shards, "x", len(cases)), y=y, case_ids=[c.case_id for c in cases],
        patient_ids=[c.patient_id for c in cases],
        split=split if split is not None else assign_splits(cases, y),
        classes=list(spec.classes), label_mode=spec.label_mode, cache_path=cache.root,
        cache_hit=hit, boxes=boxes,
        masks=ShardedArray(shards, "masks", len(cases)) if spec.label_mode == "masks" else None,
        series=dict(manifest.series), case_series=[c.series for c in cases], shards=shards)


def find_set(store: ObjectStore, key: str,
             plan: ShardPlan) -> tuple[ShardPlan, dict[str, Any] | None]:
    """A complete set of the same layout whose shards are no larger than ours (built by a
    runner with the same or a smaller budget): the largest such, and its plan. Else our
    plan and None (build it)."""
    ks: set[int] = set()
    for k in store.list(f"cache/{key}/"):
        m = re.fullmatch(rf"cache/{re.escape(key)}/k(\d+)-{plan.layout_id()}/index\.json", k)
        if m and 0 < int(m[1]) <= plan.per_shard:
            ks.add(int(m[1]))
    for per_shard in sorted(ks, reverse=True):
        found = ShardPlan(per_shard, plan.layout)
        index = read_index(store, found.prefix(key), found)
        if index is not None:
            return found, index
    return plan, None


def read_index(store: ObjectStore, prefix: str, plan: ShardPlan) -> dict[str, Any] | None:
    """The set's index when it is complete and matches the plan; None means build."""
    raw = _read_json(store, f"{prefix}/index.json")
    if raw is None or raw.get("num_cases") != len(plan.layout) or \
            raw.get("per_shard") != plan.per_shard or \
            len(raw.get("shards", [])) != plan.num_shards:
        return None
    return raw


def build_shards(spec: TrainingSpec, manifest: DatasetManifest, store: ObjectStore,
                 cache: ShardCache, plan: ShardPlan, prefix: str, progress: Progress | None,
                 workers: int, build: Build = _build) -> dict[str, Any]:
    """Decode and upload the shards the store lacks, then the index (last).

    Consecutive missing shards are decoded together, up to ``BUILD_MAX_BYTES`` of memory
    at once: one decode pool start per group rather than per shard."""
    sizes = dict(store.list_sizes(f"{prefix}/"))
    metas: dict[int, dict[str, Any]] = {}
    for i in range(plan.num_shards):
        side = f"{prefix}/shard-{i:05d}.json"
        meta = _read_json(store, side) if side in sizes else None
        if meta is not None and _complete(meta, len(plan.cases(i)), sizes, spec.label_mode):
            metas[i] = meta
    shard_bytes = plan.per_shard * case_bytes(spec)
    group = max(1, BUILD_MAX_BYTES // shard_bytes)
    total, run = len(plan.layout), list[int]()
    for i in range(plan.num_shards + 1):
        if i < plan.num_shards and i not in metas and len(run) < group:
            run.append(i)
            continue
        if run:
            metas.update(_build_run(spec, manifest, store, cache, plan, run, prefix, workers,
                                    build, _offset(progress, run[0] * plan.per_shard, total)))
            run = [] if i in metas or i == plan.num_shards else [i]
        if i in metas and progress is not None:
            progress(min(total, (i + 1) * plan.per_shard), total)
    index = {"version": LAYOUT_VERSION, "cache_key": cache_key(spec), "num_cases": total,
             "per_shard": plan.per_shard, "shards": [metas[i] for i in range(plan.num_shards)]}
    store.put_bytes(f"{prefix}/index.json", json.dumps(index).encode(), "application/json")
    return index


def _build_run(spec: TrainingSpec, manifest: DatasetManifest, store: ObjectStore,
               cache: ShardCache, plan: ShardPlan, run: list[int], prefix: str, workers: int,
               build: Build, progress: Progress | None) -> dict[int, dict[str, Any]]:
    """Decode the consecutive shards ``run`` in one go, then upload each with its sidecar."""
    layout = np.concatenate([plan.cases(i) for i in run])
    sub = manifest.model_copy(update={"cases": [manifest.cases[j] for j in layout]})
    arrays = build(spec, sub, store, progress, workers)
    out, at, token = {}, 0, uuid.uuid4().hex[:12]
    for i in run:
        n = len(plan.cases(i))
        part = slice(at, at + n)
        at += n
        objects = {}
        for name in ("x", "masks"):
            array = getattr(arrays, name)
            if array is None:
                continue
            key = f"{prefix}/shard-{i:05d}.{token}.{name}.npy"
            info = store.put_file(key, cache.put(key, np.ascontiguousarray(array[part])))
            objects[name] = {"key": key, "sha256": info.sha256, "size": info.size}
        targets: list[Any] = []
        if arrays.boxes is not None:
            targets = [np.asarray(b, np.float32).tolist() for b in arrays.boxes[part]]
        elif arrays.masks is not None:
            targets = presence_from_masks(arrays.masks[part], len(spec.classes)).tolist()
        out[i] = {"shard": i, "count": n, "objects": objects, "targets": targets}
        store.put_bytes(f"{prefix}/shard-{i:05d}.json", json.dumps(out[i]).encode(),
                        "application/json")  # after its arrays: a sidecar means they are whole
    return out


def _complete(meta: dict[str, Any], count: int, sizes: dict[str, int], label_mode: str) -> bool:
    """A sidecar, and every array it names in the store at the size it names."""
    objects = meta.get("objects") or {}
    need = {"x", "masks"} if label_mode == "masks" else {"x"}
    targets_ok = label_mode in ("single_label", "multi_label") or \
        len(meta.get("targets") or []) == count
    return meta.get("count") == count and need <= set(objects) and targets_ok and all(
        isinstance(o, dict) and sizes.get(str(o.get("key"))) == o.get("size")
        for o in objects.values())


def _read_json(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        raw = json.loads(store.get_bytes(key))
    except (ObjectNotFound, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def _offset(progress: Progress | None, done: int, total: int) -> Progress | None:
    if progress is None:
        return None
    return lambda d, _t: progress(done + d, total)
