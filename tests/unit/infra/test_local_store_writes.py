"""The local store's small-object write path (issue 16 item 2): the same objects, paths,
URIs and failures as the generic ``write_atomically`` path, in fewer syscalls."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from infra.store import LocalStore, StoreError, is_temp_key
from infra.store import local as local_store

KEYS = ["a", "datasets/d/cases/c1/0123456789abcdef-x.dcm", "deep/er/and/deeper/k.bin",
        "unicode/épaule-肩 #?%.png", "spaces are fine/x y.json"]


@pytest.mark.parametrize("key", KEYS)
def test_put_bytes_writes_the_object_where_path_and_uri_say(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "store")
    info = store.put_bytes(key, b"payload")
    path = store.root.joinpath(*key.split("/"))
    assert path.read_bytes() == b"payload" and store.get_bytes(key) == b"payload"
    assert info.uri == path.as_uri() == store.uri(key)  # the text-built URI is pathlib's
    assert store.key_from_uri(info.uri) == key
    assert info.sha256 == hashlib.sha256(b"payload").hexdigest() and info.size == 7
    assert store.list("") == [key]  # no temporary file left beside it


def test_rewriting_an_existing_key_in_an_existing_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("d/x", b"one")
    made: list[str] = []
    real_mkdir = os.mkdir

    def mkdir(path: str, *args: int) -> None:
        made.append(str(path))
        real_mkdir(path, *args)

    monkeypatch.setattr(local_store.os, "mkdir", mkdir)
    store.put_bytes("d/x", b"two")
    store.put_bytes("d/y", b"three")
    store.put_bytes("d/new/z", b"four")
    assert made == [f"{store.root}/d/new"]  # an existing directory is never made again
    assert store.get_bytes("d/x") == b"two" and store.get_bytes("d/y") == b"three"


def test_a_file_where_a_directory_should_be_is_a_store_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("a", b"file")
    with pytest.raises(StoreError, match="'a/b'"):
        store.put_bytes("a/b", b"x")
    with pytest.raises(StoreError, match="'a/b/c'"):
        store.put_bytes("a/b/c", b"x")
    store.put_bytes("dir/inner", b"x")
    with pytest.raises(StoreError, match="'dir'"):
        store.put_bytes("dir", b"x")  # a directory cannot be replaced by an object
    assert sorted(store.list("")) == ["a", "dir/inner"]
    assert not [n for _, _, names in os.walk(tmp_path) for n in names if is_temp_key(n)]


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local_store.os, "fsync", broken_fsync)
    with pytest.raises(StoreError, match="No space left"):
        store.put_bytes("cases/c1/img.dcm", b"x" * 100)
    assert not store.exists("cases/c1/img.dcm")
    assert [n for _, _, names in os.walk(tmp_path) for n in names] == []


def test_every_write_is_fsynced_before_it_is_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(local_store.os, "fsync", fsync)
    monkeypatch.setattr(local_store.os, "replace", replace)
    store.put_bytes("new/dir/k", b"data")
    store.put_bytes("new/dir/k", b"again")
    assert events == ["fsync", "replace", "fsync", "replace"]
