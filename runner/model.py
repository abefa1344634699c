"""Build the network a spec names, and load its weights only if they are the right ones.

Weights come from the store (the zoo mirror, DESIGN.md §7), so a bad file is
a permanent, typed failure: a sha256 mismatch or a backbone that does not
match the network must never turn into a model silently trained from
partial random init.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models import adapt_input_conv
from torch import nn

from infra.errors import PermanentError, TransientError
from infra.store import InvalidKey, ObjectNotFound, ObjectStore, StoreUnavailable
from schemas.spec import ModelSpec


class ModelError(PermanentError):
    """The network cannot be built (unknown name, impossible arguments)."""

    def __init__(self, message: str) -> None:
        super().__init__("model_invalid", message)


class WeightsError(PermanentError):
    """The weights are missing, corrupt, not the pinned ones, or do not fit the network."""

    def __init__(self, message: str) -> None:
        super().__init__("weights_invalid", message)


@dataclass(frozen=True)
class LoadReport:
    """What a weights load did, for the log and the model card."""

    loaded: int
    head_skipped: list[str]
    adapted_input: bool


def build_model(spec: ModelSpec, store: ObjectStore | None = None) -> nn.Module:
    """timm network with the spec's classes and input channels; weights if pinned."""
    if spec.pretrained and spec.weights_key is None:
        return _create(spec, pretrained=True)
    model = _create(spec, pretrained=False)
    if spec.weights_key is not None:
        if store is None:
            raise WeightsError(f"weights {spec.weights_key} pinned but no object store given")
        state = fetch_weights(store, spec.weights_key, spec.weights_sha256)
        load_backbone(model, state)
    return model


def _create(spec: ModelSpec, *, pretrained: bool) -> nn.Module:
    """Offline-only pretrained download: with no local weights that is a WeightsError."""
    try:
        model = timm.create_model(
            spec.network,
            pretrained=pretrained,
            num_classes=spec.num_classes,
            in_chans=spec.in_chans,
        )
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ModelError(f"unknown network {spec.network!r}") from exc
        raise (WeightsError if pretrained else ModelError)(f"{spec.network}: {exc}") from exc
    except Exception as exc:
        if pretrained:
            raise WeightsError(f"no pretrained weights for {spec.network} ({exc})") from exc
        raise ModelError(f"cannot build {spec.network}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec.network} did not build a torch module")
    return model


def fetch_weights(store: ObjectStore, key: str, sha256: str | None) -> dict[str, torch.Tensor]:
    """Download, verify the pinned sha256, then parse (never parse unverified bytes)."""
    if not sha256:
        raise WeightsError(f"weights {key} have no pinned sha256; refusing to load them")
    with tempfile.TemporaryDirectory(prefix="radtrain-weights-") as tmp:
        path = Path(tmp) / "weights.safetensors"
        try:
            store.get_file(key, path)
        except (ObjectNotFound, InvalidKey) as exc:
            raise WeightsError(f"weights {key} not found in the store ({exc})") from exc
        except StoreUnavailable as exc:
            raise TransientError("store_unavailable", f"reading weights {key}: {exc}") from exc
        digest = _sha256(path)
        if digest != sha256.lower():
            raise WeightsError(
                f"weights {key} have sha256 {digest[:16]}..., expected {sha256[:16]}..."
            )
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(f"weights {key} are not a valid safetensors file ({exc})") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Parameter-name prefixes of the classifier head, which a new task replaces."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor]) -> LoadReport:
    """Load every backbone tensor; only the classifier head may be left out or differ.

    A first convolution with another channel count is adapted the way timm
    does it for pretrained weights (sum or repeat over input channels).
    """
    heads = head_prefixes(model)
    own = model.state_dict()
    state = dict(state)
    adapted = _adapt_first_conv(model, own, state)
    skipped = [
        k for k in state if k.startswith(heads) and (k not in own or own[k].shape != state[k].shape)
    ]
    for k in skipped:
        del state[k]
    bad_shape = [k for k in state if k in own and own[k].shape != state[k].shape]
    if bad_shape:
        raise WeightsError(f"weights do not fit the network: shape mismatch in {bad_shape[:5]}")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(heads)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(heads)]
    if missing or unexpected:
        raise WeightsError(
            f"weights do not match the backbone: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    return LoadReport(loaded=len(state), head_skipped=skipped, adapted_input=adapted)


def _adapt_first_conv(
    model: nn.Module, own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
) -> bool:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    key = f"{first}.weight" if isinstance(first, str) else None
    if key is None or key not in state or key not in own:
        return False
    src, dst = state[key], own[key]
    if src.ndim != 4 or src.shape[1] == dst.shape[1]:
        return False
    try:
        state[key] = adapt_input_conv(int(dst.shape[1]), src)
    except Exception as exc:
        raise WeightsError(f"cannot adapt {key} to {dst.shape[1]} input channels: {exc}") from exc
    return True
