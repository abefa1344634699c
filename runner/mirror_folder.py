"""Mirror many zoo entries at once from a folder (``radtrain zoo mirror --all --from DIR``).

Where the internet is not reachable, weights arrive as a folder copied from
a machine where it is: a Hugging Face cache (``models--timm--<name>/
snapshots/<commit>/model.safetensors``, with ``refs/main``; the folder may be
the cache itself or an ``HF_HOME`` holding ``hub/``), or plain files named
after the entry (``resnet18.a1_in1k.safetensors``, ``.pth``, ``.bin``; or a
folder ``resnet18.a1_in1k/model.safetensors``), or torchvision's own file
names (``resnet50-11ad3fa6.pth``). Each zoo entry whose weights are found is
mirrored through :func:`runner.mirror.mirror_entry`, which loads the file
strictly into the network (timm's pretrained loader, then the runner's own
loading path), so a file for another architecture is refused with its reason
and never reaches the store. Entries sharing one weights file (a U-Net and
its encoder's classifier) are mirrored once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from handlers.catalog.zoo import UnknownZooEntry, ZooEntry, get_entry, list_entries, mirror_key
from infra.store import ObjectStore
from runner.mirror import Mirrored, mirror_entry, read_state
from runner.model import ModelError, WeightsError

HF_FILES = ("model.safetensors", "pytorch_model.bin")
SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass
class FolderReport:
    mirrored: list[Mirrored] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    """Weights ids already in the mirror (``--if-missing``)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Weights id -> why its file was refused (wrong network, unreadable ...)."""
    not_found: int = 0
    """Weights ids of the selected entries with no file in the folder."""


def hf_cached_file(repo_id: str, filename: str, cache: Path) -> Path | None:
    """A file of a hub repo in a Hugging Face cache: the ``refs/main`` snapshot, else the
    newest (the layout handlers/weights_index.py reads too; runner may not import it)."""
    snapshots = cache / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = snapshots.parent / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip() / filename).is_file():
        return snapshots / ref.read_text().strip() / filename
    found = [p / filename for p in snapshots.iterdir() if (p / filename).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _hf_caches(root: Path) -> list[Path]:
    return [p for p in (root, root / "hub") if p.is_dir()]


def find_weights_file(root: Path, entry: ZooEntry) -> Path | None:
    """The file in ``root`` holding ``entry``'s weights, in the layouts the module names."""
    source = get_entry(entry.weights_id)
    repo = source.hf_hub_id
    if repo:
        for cache in _hf_caches(root):
            for name in HF_FILES:
                found = hf_cached_file(repo, name, cache=cache)
                if found is not None:
                    return found
    names = dict.fromkeys([source.id, entry.id, *([repo.split("/")[-1]] if repo else [])])
    for name in names:
        for suffix in SUFFIXES:
            if (root / f"{name}{suffix}").is_file():
                return root / f"{name}{suffix}"
        for inner in HF_FILES:
            if (root / name / inner).is_file():
                return root / name / inner
    if source.url:
        leaf = root / source.url.rsplit("/", 1)[-1]
        if leaf.is_file():
            return leaf
    return None


def mirror_folder(root: Path, store: ObjectStore, entry_ids: Iterable[str] | None = None,
                  *, if_missing: bool = False) -> FolderReport:
    """Mirror every selected entry (default: the whole zoo) whose weights ``root`` holds."""
    if not root.is_dir():
        raise WeightsError(f"{root} is not a folder")
    entries = list_entries() if entry_ids is None else [get_entry(e) for e in entry_ids]
    by_weights: dict[str, ZooEntry] = {}
    for e in entries:
        by_weights.setdefault(e.weights_id, e)
    report = FolderReport()
    for weights_id, entry in by_weights.items():
        path = find_weights_file(root, entry)
        if path is None:
            report.not_found += 1
            continue
        if if_missing and store.exists(mirror_key(entry)):
            report.present.append(weights_id)
            continue
        try:
            done = mirror_entry(weights_id, store, path)
        except (WeightsError, ModelError, UnknownZooEntry) as exc:
            report.failed[weights_id] = f"{path.name}: {strict_diff(entry, path) or exc}"[:500]
            continue
        if done is not None:
            report.mirrored.append(done)
    return report


def strict_diff(entry: ZooEntry, path: Path) -> str | None:
    """Why a refused timm file does not fit the network, key by key (for the report)."""
    import timm

    source = get_entry(entry.weights_id)
    if source.builder != "timm":
        return None
    try:
        state = read_state(path)
        own = timm.create_model(source.network, pretrained=False).state_dict()
    except Exception:
        return None
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if not (missing or extra or shapes):
        return None
    return (f"does not fit {source.network}: {len(missing)} missing keys {missing[:3]}, "
            f"{len(extra)} unexpected {extra[:3]}, {len(shapes)} of another shape {shapes[:3]}")
