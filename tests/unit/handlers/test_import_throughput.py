"""Import throughput changes (issue 16 item 2) keep the import's results exactly.

One read of each image while storing it (hashed in memory, same content-addressed
key as before), one header read per image, header workers in other processes
that find the same problems as the in-process read, and the S3 client's
connection pool sized from the settings.
"""

from __future__ import annotations

import builtins
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from handlers.datasets_import import headers, pipeline, validate
from handlers.datasets_import.base import ImportOptions, Problem
from handlers.datasets_import.job import _Tracker
from handlers.datasets_import.pipeline import prepare, upload_cases
from handlers.datasets_import.validate import Validated
from imaging.budget import DecodeBudget, default_budget, set_default_budget
from infra.settings import Settings
from infra.store import LocalStore, ObjectInfo, open_store
from schemas.dataset import case_key
from tests.support.dataset_utils import (
    MemoryDatasetRepo,
    classification_folder,
    ct,
    write_csv,
    write_dicom,
)


def opts(**kw: Any) -> ImportOptions:
    return ImportOptions(name="t", format="folder-csv", tenant="default", **kw)


def checked(root: Path, **kw: Any) -> Validated:
    result = prepare(root, opts(**kw))
    assert not isinstance(result, Problem), result
    return result


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- storing: one read, same keys ------------------------------------------------


def test_each_image_is_opened_once_and_stored_under_its_content_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = classification_folder(tmp_path / "src", n=4)
    v = checked(root)
    store = LocalStore(tmp_path / "store")
    opened: list[Path] = []
    real_open = builtins.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(Path(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(pipeline, "open", counting_open, raising=False)
    cases, problems = upload_cases(store, "ds", v.good, workers=3)
    assert not problems and len(cases) == 4
    sources = [p for c in v.good for p in c.images]
    assert sorted(opened) == sorted(sources), "each source image read exactly once"
    for case, valid in zip(cases, v.good, strict=True):
        (key,) = case.images
        src = valid.images[0]
        digest = file_digest(src)
        assert key == f"cases/{valid.case_id}/{digest[:16]}-{src.name}"  # as before
        assert store.get_bytes(case_key("ds", key)) == src.read_bytes()


def test_a_large_image_streams_and_is_checked_against_its_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = classification_folder(tmp_path / "src", n=2)
    v = checked(root)
    monkeypatch.setattr(pipeline, "INLINE_MAX_BYTES", 16)  # every image is "large" now
    store = LocalStore(tmp_path / "store")
    cases, problems = upload_cases(store, "ds", v.good)
    assert not problems
    for case, valid in zip(cases, v.good, strict=True):
        digest = file_digest(valid.images[0])
        assert case.images[0].split("/")[-1].startswith(digest[:16])
        assert store.get_bytes(case_key("ds", case.images[0])) == valid.images[0].read_bytes()


class ChangingStore(LocalStore):
    """Rewrites the source just before the store streams it (a source changing underfoot)."""

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        path.write_bytes(path.read_bytes() + b"changed")
        return super().put_file(key, path, content_type)


def test_an_image_that_changes_while_stored_is_a_problem_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = classification_folder(tmp_path / "src", n=2)
    v = checked(root)
    monkeypatch.setattr(pipeline, "INLINE_MAX_BYTES", 16)
    cases, problems = upload_cases(ChangingStore(tmp_path / "store"), "ds", v.good)
    assert not cases and {p.code for p in problems} == {"upload_failed"}
    assert all(f"{p.case_id}.dcm changed" in p.message for p in problems)


class FailingStore(LocalStore):
    """A store with a bug: its third write raises something no caller expects."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes = 0

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None,
                  *, sha256: str | None = None) -> ObjectInfo:
        self.writes += 1
        if self.writes == 3:
            raise RuntimeError("bug in the store")
        return super().put_bytes(key, data, content_type, sha256=sha256)


def test_uploaded_cases_keep_their_order_and_an_unexpected_error_is_raised(
    tmp_path: Path
) -> None:
    root = classification_folder(tmp_path / "src", n=6)
    v = checked(root)
    cases, problems = upload_cases(LocalStore(tmp_path / "store"), "ds", v.good, workers=4)
    assert not problems and [c.case_id for c in cases] == [c.case_id for c in v.good]
    with pytest.raises(RuntimeError, match="bug in the store"):  # never a case dropped
        upload_cases(FailingStore(tmp_path / "store2"), "ds", v.good, workers=3)


def test_put_bytes_trusts_a_given_digest_and_computes_one_otherwise(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert store.put_bytes("a", b"x", sha256="f" * 64).sha256 == "f" * 64
    assert store.put_bytes("b", b"x").sha256 == hashlib.sha256(b"x").hexdigest()


# --- headers: one read per image, in-process or in workers ----------------------


def test_each_header_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = classification_folder(tmp_path, n=5)
    calls: list[Path] = []
    real = validate.read_header

    def counting(path: Path, **kwargs: Any) -> Any:
        calls.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(validate, "read_header", counting)
    v = checked(root)
    assert len(v.good) == 5 and sorted(calls) == sorted(p for c in v.good for p in c.images)


def _broken_folder(root: Path) -> Path:
    root = classification_folder(root, n=4)
    (root / "images" / "c1.dcm").write_bytes((root / "images" / "c1.dcm").read_bytes()[:-100])
    (root / "images" / "c2.dcm").write_text("not an image at all" * 20)
    big = write_dicom(root / "images" / "huge.dcm", np.zeros((4, 4), np.float32))
    ds = pydicom.dcmread(big)
    ds.Rows = ds.Columns = 2000
    ds.save_as(big)
    for i in range(3):  # a three-slice stack: its headers travel together
        ct(root / "images" / f"s{i}.dcm", patient="PS")
    write_csv(root / "labels.csv", ["image", "label"], [
        ["images/c0.dcm", "normal"], ["images/c1.dcm", "finding"],
        ["images/c2.dcm", "normal"], ["images/c3.dcm", "finding"],
        ["images/huge.dcm", "normal"],
        ["images/s0.dcm|images/s1.dcm|images/s2.dcm", "finding"]])
    return root


def pool_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small chunks, so a few images make a pool; no in-process read, so it is used."""
    monkeypatch.setattr(headers, "_CHUNK_IMAGES", 2)

    def in_process(*args: Any) -> Any:
        raise AssertionError("read in-process, not by the header workers")

    monkeypatch.setattr(headers, "headers_of", in_process)


def _summary(v: Validated) -> tuple[Any, ...]:
    return (sorted((p.code, p.case_id, p.source, p.message) for p in v.problems),
            [(c.case_id, c.headers) for c in v.good])


def test_header_workers_find_what_the_in_process_read_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _broken_folder(tmp_path)
    inline = checked(root, max_image_bytes=1_000_000)
    pool_only(monkeypatch)
    assert headers.worker_count(opts(header_workers=2, header_pool_min=1), 9) == 2
    pooled = checked(root, max_image_bytes=1_000_000, header_workers=2, header_pool_min=1)
    assert _summary(pooled) == _summary(inline)
    assert {(p.code, p.case_id) for p in pooled.problems} >= {
        ("truncated", "c1"), ("not_image", "c2"), ("too_large", "huge")}


def test_header_workers_get_the_per_image_decode_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = classification_folder(tmp_path, n=3)  # 16x16 CT: 512 bytes of pixels each
    before = default_budget()
    set_default_budget(DecodeBudget(request_bytes=64, process_bytes=1 << 20))
    try:
        inline = checked(root)
        pool_only(monkeypatch)
        pooled = checked(root, header_workers=2, header_pool_min=1)
    finally:
        set_default_budget(before)
    assert {p.code for p in inline.problems if p.case_id} == {"too_large"}
    assert _summary(pooled) == _summary(inline)


def test_compressed_images_are_decoded_by_the_importer_not_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydicom.data import get_testdata_file

    pool_only(monkeypatch)
    decoded: list[str] = []
    real = headers.read_image

    def counting(path: Path, **kwargs: Any) -> Any:
        decoded.append(path.name)
        return real(path, **kwargs)

    monkeypatch.setattr(headers, "read_image", counting)

    rows = []
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small.dcm"):
        (tmp_path / name).write_bytes(Path(str(get_testdata_file(name))).read_bytes())
        rows.append([name, "x"])
    write_csv(tmp_path / "labels.csv", ["image", "label"], rows)
    pooled = checked(tmp_path, decode="always", header_workers=2, header_pool_min=1)
    assert not pooled.problems and len(pooled.good) == 3
    assert sorted(decoded) == sorted(r[0] for r in rows)  # here, under this process's budget


def test_worker_count_is_one_below_the_pool_minimum_and_bounded_by_the_work() -> None:
    assert headers.worker_count(opts(header_workers=4, header_pool_min=100), 99) == 1
    assert headers.worker_count(opts(header_workers=4, header_pool_min=100), 10_000) == 4
    assert headers.worker_count(opts(header_workers=4, header_pool_min=1), 128) == 2
    assert headers.worker_count(opts(header_workers=0, header_pool_min=1), 10_000) >= 1


# --- settings ------------------------------------------------------------------


def test_s3_connection_pool_comes_from_the_settings() -> None:
    base = {"store_backend": "s3", "s3_endpoint_url": "http://127.0.0.1:9",
            "s3_access_key_id": "k", "s3_secret_access_key": "s"}
    store: Any = open_store(Settings(**base, s3_max_connections=40), ensure_bucket=False)
    assert store.client.meta.config.max_pool_connections == 40
    wide: Any = open_store(Settings(**base, s3_max_connections=8, import_upload_workers=64),
                           ensure_bucket=False)
    assert wide.client.meta.config.max_pool_connections == 64  # never fewer than the uploaders


@pytest.mark.parametrize(("field", "bad"), [
    ("import_upload_workers", 0), ("import_upload_workers", 1000),
    ("import_header_workers", -1), ("import_header_pool_min", 0), ("s3_max_connections", 0)])
def test_throughput_settings_are_bounded(field: str, bad: int) -> None:
    with pytest.raises(ValueError, match=field):
        Settings(**{field: bad})


def test_progress_tracker_keeps_counts_monotonic_within_a_phase() -> None:
    tracker = _Tracker()
    tracker("uploading", 5, 10)
    tracker("uploading", 3, 10)  # a slower worker thread reporting late
    version, progress = tracker.snapshot()
    assert (progress.phase, progress.done, progress.uploaded, version) == ("uploading", 5, 5, 2)
    tracker("registering", 0, 1)
    assert tracker.snapshot()[1].done == 0


def test_an_import_flushes_its_images_to_disk_once_before_the_manifest_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fsync per image cost twice the header reads (bench_import): the images are
    written unsynced and made durable by one sync, which comes before the manifest
    (itself written with its own fsync) and before the dataset is registered."""
    import asyncio

    from handlers.datasets_import.pipeline import import_dataset
    from infra.store import local
    from schemas.dataset import manifest_key

    root = classification_folder(tmp_path / "src", n=6)
    store, repo, calls = LocalStore(tmp_path / "store"), MemoryDatasetRepo(), []
    real_fsync, real_sync = local.os.fsync, LocalStore.sync
    monkeypatch.setattr(local.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd)))

    def sync(self: LocalStore) -> None:
        calls.append(f"sync with {len(self.list('datasets/'))} objects")
        real_sync(self)

    monkeypatch.setattr(LocalStore, "sync", sync)
    report = asyncio.run(import_dataset(store, repo, root, opts(dataset_id="d1")))  # type: ignore[arg-type]
    assert report.registered, report.problems
    assert calls[0] == "sync with 6 objects" and "fsync" in calls[1:], calls
    assert calls.count("fsync") <= 2 and store.exists(manifest_key("d1"))  # the manifest's
    assert "d1" in repo.saved


def test_an_unsynced_view_writes_the_same_objects_without_an_fsync_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.store import local

    store = LocalStore(tmp_path)
    fsyncs: list[int] = []
    monkeypatch.setattr(local.os, "fsync", fsyncs.append)
    view = store.unsynced()
    view.put_bytes("a/b", b"x")
    view.put_file("a/c", Path(__file__))
    assert fsyncs == [] and store.get_bytes("a/b") == b"x"
    assert store.get_bytes("a/c") == Path(__file__).read_bytes()
    store.put_bytes("a/d", b"y")
    assert len(fsyncs) == 1  # the store itself still flushes each write
    view.sync()
