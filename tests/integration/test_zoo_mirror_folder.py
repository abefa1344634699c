"""``radtrain zoo mirror --all --from DIR`` and auto-select by goal (issue 15 item 9).

The test makes its own weights for three small timm networks (random
values, the right keys and shapes), lays them out as a site would copy them
(a Hugging Face cache for one, plain files for the others, plus a file of
the wrong network under a zoo entry's name), mirrors the folder through the
CLI, and checks that auto-select then picks a different entry per goal.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
from safetensors.torch import save_file
from typer.testing import CliRunner

from handlers.enrich import enrich
from handlers.weights_index import StoreWeightsIndex
from infra.store import LocalStore
from radtrain.cli.main import app
from schemas.zoo import weights_key
from tests.support.factories import dataset, request

FASTEST = "mobilenetv3_small_050.lamb_in1k"  # 1.6 M parameters
BALANCED = "convnext_atto.d2_in1k"  # 3.7 M
ACCURATE = "convnext_femto.d1_in1k"  # 5.2 M
WRONG = "regnetx_002.pycls_in1k"  # the file holds resnet10t


def _save(network: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = timm.create_model(network).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def _hf_cache(root: Path, repo: str, network: str) -> None:
    folder = root / ("models--" + repo.replace("/", "--"))
    _save(network, folder / "snapshots" / "0123abcd" / "model.safetensors")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abcd")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    _hf_cache(root / "hub", f"timm/{BALANCED}", "convnext_atto")  # an HF_HOME copied over
    _save("mobilenetv3_small_050", root / f"{FASTEST}.safetensors")
    _save("convnext_femto", root / ACCURATE / "model.safetensors")
    _save("resnet10t", root / f"{WRONG}.safetensors")
    return root


def _mirror(store_dir: Path, *args: str) -> tuple[int, dict[str, object], str]:
    out = CliRunner().invoke(app, ["zoo", "mirror", "--all", *args, "--json"],
                             env={"RADTRAIN_STORE_DIR": str(store_dir), "HF_HUB_OFFLINE": "1"})
    try:
        body = json.loads(out.stdout)
    except ValueError:
        body = {}
    return out.exit_code, body, out.output


def test_mirror_all_imports_each_found_entry_and_refuses_a_wrong_file(
        weights_dir: Path, tmp_path: Path) -> None:
    code, body, output = _mirror(tmp_path / "store", "--from", str(weights_dir))
    assert code == 1, output  # one file was refused: a script must notice
    assert {m["entry"] for m in body["mirrored"]} == {FASTEST, BALANCED, ACCURATE}  # type: ignore[union-attr]
    failed = body["failed"]
    assert isinstance(failed, dict) and set(failed) == {WRONG}
    assert "does not fit regnetx_002" in failed[WRONG] and "missing keys" in failed[WRONG]
    assert isinstance(body["not_found"], int) and body["not_found"] > 150
    store = LocalStore(tmp_path / "store")
    for entry in (FASTEST, BALANCED, ACCURATE):
        assert store.exists(weights_key(entry)) and store.exists(weights_key(entry) + ".sha256")
    assert not store.exists(weights_key(WRONG))
    (weights_dir / f"{WRONG}.safetensors").rename(tmp_path / "wrong.safetensors")
    try:
        again, body, output = _mirror(tmp_path / "store", "--from", str(weights_dir),
                                      "--if-missing")
    finally:
        (tmp_path / "wrong.safetensors").rename(weights_dir / f"{WRONG}.safetensors")
    assert again == 0, output
    assert not body["mirrored"] and set(body["already_mirrored"]) == {  # type: ignore[arg-type]
        FASTEST, BALANCED, ACCURATE}


def test_mirror_all_needs_a_folder(tmp_path: Path) -> None:
    code, _, output = _mirror(tmp_path / "store")
    assert code == 2 and "--from DIR" in output


def _pick(store: LocalStore, goal: str, target: str = "gpu") -> str:
    cmd = request(model={"mode": "auto", "data_type": {"modality": "CT", "image_size": 256},
                         "preference": {"goal": goal, "target": target}})
    index = StoreWeightsIndex(store, hf_cache=store.root / "no-hf-cache")
    return enrich(cmd, dataset(num_cases=100), index).model.entry_id


def test_auto_select_picks_a_different_entry_per_goal(weights_dir: Path,
                                                      tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    _mirror(store_dir, "--from", str(weights_dir))
    store = LocalStore(store_dir)
    picks = {goal: _pick(store, goal) for goal in ("fastest", "balanced", "most_accurate")}
    assert picks == {"fastest": FASTEST, "balanced": BALANCED, "most_accurate": ACCURATE}
    # without femto, the most accurate choice is atto, ranked far below the first 40
    store.delete(weights_key(ACCURATE))
    assert _pick(store, "most_accurate") == BALANCED
    assert _pick(store, "fastest", "edge") == FASTEST


def test_the_index_lists_mirrored_and_hub_cached_weights(weights_dir: Path,
                                                         tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    assert StoreWeightsIndex(store, hf_cache=tmp_path / "none").available() == set()
    cached = StoreWeightsIndex(store, hf_cache=weights_dir / "hub")
    assert cached.available() == {BALANCED}  # found in the hub cache, not yet mirrored
    _mirror(tmp_path / "store", "--from", str(weights_dir))
    assert StoreWeightsIndex(store, hf_cache=tmp_path / "none").available() == {
        FASTEST, BALANCED, ACCURATE}


def test_one_entry_from_a_folder(weights_dir: Path, tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["zoo", "mirror", "mobilenetv3_small_050", "--from",
                                   str(weights_dir)],
                             env={"RADTRAIN_STORE_DIR": str(tmp_path / "s"),
                                  "HF_HUB_OFFLINE": "1"})
    assert out.exit_code == 0, out.output
    assert "1 mirrored, 0 already mirrored, 0 refused, 0 entries without a file" in out.output
    assert LocalStore(tmp_path / "s").list("zoo/weights/") == [
        weights_key(FASTEST), weights_key(FASTEST) + ".sha256"]
