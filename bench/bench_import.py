"""Dataset import throughput: N tiny DICOM cases, folder + labels CSV, end to end.

Measures ``import_dataset`` (parse, header validation, content-addressed upload
to a local store, manifest + KV registration on a real nats-server) against a
bound measured in the same run on the same files: a bare pydicom header read
(``dcmread(stop_before_pixels=True)``) per file, the least any validating
import must do. Prints cases/s for both and their ratio.

With ``--s3`` the same files are then imported to S3 on a real SeaweedFS
(``weed mini``, stopped with SIGINT) against a bare boto3 ``put_object`` of them
from as many threads as the import stores with (``Settings.import_upload_workers``),
measured in the same run; that ratio is ``s3_ratio``.

    python -m bench.bench_import              # 10,000 cases
    python -m bench.bench_import --cases 500  # quicker
    python -m bench.bench_import --s3 --cases 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from handlers.datasets_import.base import ImportOptions
from handlers.datasets_import.pipeline import import_dataset
from infra.settings import Settings
from infra.store import LocalStore, ObjectStore, open_store
from schemas.dataset import DatasetSummary

SIZE = 32
_PATIENT = b"PATIENT00000"


def write_cases(root: Path, n: int, seed: int = 0, size: int = SIZE) -> None:
    """n valid CT DICOMs from one template: only the patient id and pixels change.

    Serialising a template once and patching bytes keeps generation far cheaper
    than the import it feeds, so the benchmark measures the import.
    """
    template = _template(size)
    pix_at = len(template) - size * size * 2
    pat_at = template.index(_PATIENT)
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for i in range(n):
        data = bytearray(template)
        data[pat_at:pat_at + len(_PATIENT)] = f"PATIENT{i // 2:05d}".encode()
        data[pix_at:] = rng.integers(900, 1200, size * size, dtype=np.int16).tobytes()
        (images / f"case{i:05d}.dcm").write_bytes(data)
        rows.append((f"images/case{i:05d}.dcm", "finding" if i % 2 else "normal"))
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("image", "label"))
        writer.writerows(rows)


def _template(size: int) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = _PATIENT.decode(), "CT"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = np.zeros((size, size), np.int16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def header_bound(root: Path) -> float:
    """Seconds for a bare pydicom header read of every file: the bound."""
    files = sorted((root / "images").iterdir())
    started = time.perf_counter()
    for path in files:
        pydicom.dcmread(path, stop_before_pixels=True)
    return time.perf_counter() - started


class MemoryRepo:
    """KV stand-in for ``--memory-kv`` (no nats-server binary at hand)."""

    def __init__(self) -> None:
        self.items: dict[str, DatasetSummary] = {}

    async def get(self, dataset_id: str) -> DatasetSummary | None:
        return self.items.get(dataset_id)

    async def put(self, summary: DatasetSummary) -> None:
        self.items[summary.id] = summary


async def timed_import(root: Path, store_dir: Path, memory_kv: bool,
                       store: ObjectStore | None = None) -> tuple[float, int]:
    store = store or LocalStore(store_dir)
    settings = Settings()
    opts = ImportOptions(name="bench", format="folder-csv", tenant="bench",
                         upload_workers=settings.import_upload_workers,
                         header_workers=settings.import_header_workers,
                         header_pool_min=settings.import_header_pool_min)
    if memory_kv:
        started = time.perf_counter()
        report = await import_dataset(store, MemoryRepo(), root, opts)  # type: ignore[arg-type]
        return time.perf_counter() - started, report.num_cases if report.registered else -1
    from infra.bus.topology import apply, connect
    from infra.kv import DatasetRepo
    from radtrain.servers.nats import start_nats

    proc, url = start_nats(store_dir.parent / "nats", port=0, sync_always=False)
    try:
        settings = settings.model_copy(update={"nats_url": url})
        nc, js = await connect(settings, "bench-import")
        await apply(js, settings)
        repo = await DatasetRepo.open(js)
        started = time.perf_counter()
        report = await import_dataset(store, repo, root, opts)
        elapsed = time.perf_counter() - started
        await nc.close()
    finally:
        proc.stop()
    if not report.registered:
        raise SystemExit(f"import failed: {report.problems[:5]}")
    return elapsed, report.num_cases


def bare_s3_upload(root: Path, endpoint: Any, bucket: str, workers: int) -> float:
    """Seconds for a bare boto3 ``put_object`` of every file, ``workers`` at a time: the
    S3 bound. One client, a pool as large as the concurrency, each file read once."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint.url, region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key_id,
        aws_secret_access_key=endpoint.secret_access_key,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=workers,
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"))
    files = sorted((root / "images").iterdir())

    def put(path: Path) -> None:
        client.put_object(Bucket=bucket, Key=f"bare/{path.name}", Body=path.read_bytes())

    put(files[0])  # connection and bucket warm, as for the import below
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, files))
    return time.perf_counter() - started


def s3_run(tmp: Path, memory_kv: bool) -> dict[str, Any]:
    """Bare upload, then the import, against one SeaweedFS started for the run."""
    from infra.store.s3 import S3Store
    from radtrain.servers.seaweedfs import start_seaweedfs

    proc, endpoint = start_seaweedfs(tmp / "weed")
    try:
        settings = Settings(**endpoint.settings_overrides(), s3_bucket="bench-import")
        store = open_store(settings)
        assert isinstance(store, S3Store)
        store.put_bytes("warm/x", b"x")
        workers = settings.import_upload_workers
        cpu0 = time.process_time()
        bare_s = bare_s3_upload(tmp / "src", endpoint, settings.s3_bucket, workers)
        bare_cpu = time.process_time() - cpu0
        cpu0 = _importer_cpu_s()
        import_s, cases = asyncio.run(timed_import(tmp / "src", tmp / "store", memory_kv,
                                                   store))
        import_cpu = _importer_cpu_s() - cpu0
    finally:
        proc.stop()  # SIGINT, then SIGKILL if it hangs
    files = len(list((tmp / "src" / "images").iterdir()))
    return {"s3_cases": cases, "s3_import_s": round(import_s, 3),
            "s3_import_cases_per_s": round(cases / import_s, 1),
            "s3_bare_upload_cases_per_s": round(files / bare_s, 1),
            "s3_ratio": round((cases / import_s) / (files / bare_s), 3),
            "s3_import_cpu_ms_per_case": round(import_cpu * 1000 / files, 3),
            "s3_bare_cpu_ms_per_case": round(bare_cpu * 1000 / files, 3),
            "upload_workers": workers}


def _importer_cpu_s() -> float:
    """CPU seconds of this process (all threads) and of the header workers so far: the
    workers are the forkserver's children, counted in its ``cutime``/``cstime``."""
    import multiprocessing.forkserver as forkserver

    from bench.cpu import TICKS_PER_S, cpu_seconds

    total = cpu_seconds(os.getpid()) or 0.0
    server = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if server:
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / TICKS_PER_S
    return total


def local_run(tmp: Path, memory_kv: bool) -> dict[str, Any]:
    files = len(list((tmp / "src" / "images").iterdir()))
    cpu0 = time.process_time()
    bound_s = header_bound(tmp / "src")
    bound_cpu = time.process_time() - cpu0
    cpu0 = _importer_cpu_s()
    import_s, cases = asyncio.run(timed_import(tmp / "src", tmp / "store", memory_kv))
    import_cpu = _importer_cpu_s() - cpu0  # nats-server start and stop included
    return {"cases": cases, "import_s": round(import_s, 3),
            "import_cases_per_s": round(cases / import_s, 1),
            "header_bound_cases_per_s": round(files / bound_s, 1),
            "ratio": round((cases / import_s) / (files / bound_s), 3),
            "import_cpu_ms_per_case": round(import_cpu * 1000 / files, 3),
            "bound_cpu_ms_per_case": round(bound_cpu * 1000 / files, 3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--memory-kv", action="store_true", help="skip nats-server")
    parser.add_argument("--s3", action="store_true",
                        help="also import to S3 (SeaweedFS), against a bare boto3 upload")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of text")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="radtrain-bench-import-"))
    try:
        t0 = time.perf_counter()
        write_cases(tmp / "src", args.cases)
        generated = time.perf_counter() - t0
        result = {**local_run(tmp, args.memory_kv), "generate_s": round(generated, 2)}
        if args.s3:
            result.update(s3_run(tmp, args.memory_kv))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return result
    print(f"import of {result['cases']} cases ({SIZE}x{SIZE} CT DICOM, folder-csv): "
          f"{result['import_s']:.2f} s = {result['import_cases_per_s']:.0f} cases/s")
    print(f"bound (bare pydicom header reads, same files): "
          f"{result['header_bound_cases_per_s']:.0f} cases/s")
    print(f"ratio import/bound: {result['ratio']:.3f}")
    print(f"CPU per case (importer and header workers / bare header read): "
          f"{result['import_cpu_ms_per_case']:.3f} / {result['bound_cpu_ms_per_case']:.3f} ms")
    if args.s3:
        print(f"import of the same cases to S3 (SeaweedFS): {result['s3_import_s']:.2f} s = "
              f"{result['s3_import_cases_per_s']:.0f} cases/s")
        print(f"bound (bare boto3 put_object, same files, {result['upload_workers']} threads): "
              f"{result['s3_bare_upload_cases_per_s']:.0f} cases/s")
        print(f"ratio S3 import/bound: {result['s3_ratio']:.3f}")
        print(f"CPU per case, this process (S3 import / bare upload): "
              f"{result['s3_import_cpu_ms_per_case']:.3f} / "
              f"{result['s3_bare_cpu_ms_per_case']:.3f} ms")
    return result


if __name__ == "__main__":
    main()
