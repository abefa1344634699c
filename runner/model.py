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
from runner import builders
from runner.builders import (
    AUX_HEAD,
    BuildError,
    apply_pretrained_layout,
    backbone_prefix,
    layout_of,
    load_target,
)
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
    scope: str = "full"
    """``full``: everything but the class head was loaded; ``backbone``: the backbone only."""


def build_model(spec: ModelSpec, store: ObjectStore | None = None) -> nn.Module:
    """The spec's network with its classes and input channels; pinned weights if any.

    The single entry point for every builder (runner/builders.py). Weights
    pinned by the spec are fetched, verified against their sha256 and loaded
    strictly: only the class head may be left out. Zoo weights (``zoo/weights/``)
    always get a new head, since their classes are not the task's.
    """
    if spec.pretrained and spec.weights_key is None:
        if spec.builder != "timm":
            raise WeightsError(f"{spec.entry_id}: no weights pinned; stage them with "
                               f"`radtrain zoo mirror {spec.entry_id}`")
        return _create(spec, pretrained=True)
    if spec.weights_key is None:
        return _build(spec)
    if store is None:
        raise WeightsError(f"weights {spec.weights_key} pinned but no object store given")
    state = fetch_weights(store, spec.weights_key, spec.weights_sha256)
    model, _ = build_with_weights(spec, state, fresh_head=is_zoo_weights(spec.weights_key))
    return model


def is_zoo_weights(key: str) -> bool:
    return key.startswith("zoo/weights/")


def build_with_weights(spec: ModelSpec, state: dict[str, torch.Tensor], *, fresh_head: bool
                       ) -> tuple[nn.Module, LoadReport]:
    """Build and load a verified state dict, per builder; also used by ``zoo mirror`` to check."""
    if spec.builder == "timm":
        model = _build(spec)
        return model, load_backbone(model, state, fresh_head=fresh_head)
    if spec.builder == "timm_unet":
        report = check_encoder_state(spec, state)
        return _build(spec, encoder_state=dict(state)), report
    model = _build(spec)
    report = load_torchvision(load_target(model), spec.network, state, fresh_head=fresh_head)
    if spec.builder == "torchvision_detection":
        apply_pretrained_layout(model, spec.network, scope=report.scope)
    return model, report


def _build(spec: ModelSpec, encoder_state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    try:
        return builders.build(spec, encoder_state)
    except BuildError as exc:
        raise ModelError(str(exc)) from exc
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ModelError(f"unknown network {spec.network!r}") from exc
        raise ModelError(f"cannot build {spec.network}: {exc}") from exc
    except Exception as exc:
        raise ModelError(f"cannot build {spec.network}: {exc}") from exc


def _create(spec: ModelSpec, *, pretrained: bool) -> nn.Module:
    """timm's own pretrained path, offline only: the local Hugging Face cache or a WeightsError."""
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
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Parameter-name prefixes of what sits on top of the pretrained backbone.

    For a timm classifier that is its classifier head (which a new task
    replaces). For detectors and segmenters it is everything outside the
    backbone or encoder (FPN, RPN, heads, decoder), so ``freeze_backbone_epochs``
    freezes the same part for every builder.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    if names:
        names = (names,) if isinstance(names, str) else tuple(names)
        return tuple(f"{n}." for n in names)
    backbone = backbone_prefix(model)
    if backbone is None:
        return ()
    depth = backbone.count(".")
    heads = []
    for name, _ in model.named_parameters():
        if name.startswith(backbone):
            continue
        parts = name.split(".")
        shared = 0
        while shared < depth and parts[shared] == backbone.split(".")[shared]:
            shared += 1
        prefix = ".".join(parts[:shared + 1]) + "."
        if prefix not in heads:
            heads.append(prefix)
    return tuple(heads)


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], *,
                  fresh_head: bool = False) -> LoadReport:
    """Load every backbone tensor; only the classifier head may be left out or differ.

    A first convolution with another channel count is adapted the way timm
    does it for pretrained weights (sum or repeat over input channels). With
    ``fresh_head`` the head is never loaded (zoo weights: other classes); without
    it a head of the same shape is kept (a retrain on the same classes).
    """
    heads = head_prefixes(model)
    own = model.state_dict()
    state = dict(state)
    adapted = _adapt_first_conv(model, own, state)
    skipped = [
        k for k in state if k.startswith(heads)
        and (fresh_head or k not in own or own[k].shape != state[k].shape)
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


def check_encoder_state(spec: ModelSpec, state: dict[str, torch.Tensor]) -> LoadReport:
    """A U-Net encoder's weights must fit the whole timm backbone, as strictly as a classifier.

    timm's ``features_only`` loader is lenient (it drops what the feature
    wrapper lacks), so the file is first checked against the headless
    classifier with the same rules as ``load_backbone``.
    """
    probe = _create(spec.model_copy(update={"num_classes": 0}), pretrained=False)
    report = load_backbone(probe, state, fresh_head=True)
    return LoadReport(report.loaded, report.head_skipped, report.adapted_input, "encoder")


def load_torchvision(target: nn.Module, network: str, state: dict[str, torch.Tensor], *,
                     fresh_head: bool) -> LoadReport:
    """Load detector/segmenter weights: all but the class head, or the whole backbone.

    Which of the two the file holds is read from its keys (backbone-only files
    have every key under the layout's backbone prefix); either way each
    tensor the file should cover must be there with the right shape.
    """
    lay = layout_of(network)
    own = target.state_dict()
    state = {k: v for k, v in state.items() if not AUX_HEAD.match(k)}
    skipped = [k for k in state if lay.head.match(k)
               and (fresh_head or k not in own or own[k].shape != state[k].shape)]
    for k in skipped:
        del state[k]
    if not state:
        raise WeightsError(f"weights for {network} are empty once the class head is removed")
    bad_shape = [k for k in state if k in own and own[k].shape != state[k].shape]
    unexpected = [k for k in state if k not in own]
    if bad_shape or unexpected:
        raise WeightsError(f"weights do not fit {network}: shape mismatch in {bad_shape[:3]}, "
                           f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    scope = "backbone" if all(k.startswith(lay.backbone) for k in state) else "full"
    covered = [k for k in own if scope == "full" or k.startswith(lay.backbone)]
    missing = [k for k in covered if k not in state and not lay.head.match(k)
               and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"weights do not cover {network}'s {scope}: {len(missing)} missing "
                           f"(e.g. {missing[:3]})")
    target.load_state_dict(state, strict=False)
    return LoadReport(loaded=len(state), head_skipped=skipped, adapted_input=False, scope=scope)
