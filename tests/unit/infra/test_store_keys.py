"""Object keys: what both backends accept, and everything that could escape the root."""

from __future__ import annotations

import pytest

from infra.store import (
    InvalidKey,
    StoreError,
    is_temp_key,
    temp_key_for,
    validate_key,
    validate_prefix,
)

GOOD = [
    "a",
    "runs/t-1/model.safetensors",
    "datasets/ds_1/cases/0001/image.dcm",
    "zoo/weights/resnet18.a1_in1k.safetensors",
    ".hidden",
    "a/..b/c..",
    "a/.../b",
    "unicode/épaule-肩.png",
    "spaces are fine/x y.json",
    "x" * 1024,
]

BAD = [
    ("", "empty"),
    ("/abs", "absolute"),
    ("/", "absolute"),
    ("../x", "'..'"),
    ("a/../b", "'..'"),
    ("a/..", "'..'"),
    ("..", "'..'"),
    ("./a", "'.'"),
    ("a/./b", "'.'"),
    ("a/.", "'.'"),
    ("a//b", "empty path segment"),
    ("a/", "empty path segment"),
    ("a\\b", "backslash"),
    ("..\\x", "backslash"),
    ("a\x00b", "control"),
    ("a\nb", "control"),
    ("a\x7fb", "control"),
    ("x" * 1025, "longer than 1024"),
    ("é" * 513, "longer than 1024"),  # 1026 bytes in UTF-8
]


@pytest.mark.parametrize("key", GOOD)
def test_valid_keys_are_returned_unchanged(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(("key", "reason"), BAD)
def test_invalid_keys_are_rejected_naming_key_and_reason(key: str, reason: str) -> None:
    with pytest.raises(InvalidKey) as info:
        validate_key(key)
    message = str(info.value)
    assert reason in message
    assert repr(key[:64]) in message or repr(key) in message


def test_invalid_key_is_a_store_error_and_a_value_error() -> None:
    with pytest.raises(StoreError):
        validate_key("../x")
    with pytest.raises(ValueError):
        validate_key("../x")


def test_non_string_key_is_rejected() -> None:
    with pytest.raises(InvalidKey):
        validate_key(None)  # type: ignore[arg-type]


def test_temp_keys_are_reserved_and_recognised() -> None:
    tmp = temp_key_for("runs/t/model.onnx")
    assert tmp.startswith("runs/t/model.onnx.tmp-")
    assert is_temp_key(tmp)
    assert not is_temp_key("runs/t/model.onnx")
    assert not is_temp_key("runs/t/notes.tmp-draft")
    assert temp_key_for("a") != temp_key_for("a")
    with pytest.raises(InvalidKey, match="temporary"):
        validate_key(tmp)


@pytest.mark.parametrize("prefix", ["", "runs/", "runs/t-", "datasets/ds_1/cases/"])
def test_prefixes_may_end_with_slash_or_mid_segment(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "/runs/", "../", "a//", "a/../b/", "a\\"])
def test_bad_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(InvalidKey):
        validate_prefix(prefix)
