"""Dataset import throughput: N tiny DICOM cases, folder + labels CSV, end to end.

Measures ``import_dataset`` (parse, header validation, content-addressed upload
to a local store, manifest + KV registration on a real nats-server) against a
bound measured in the same run on the same files: a bare pydicom header read
(``dcmread(stop_before_pixels=True)``) per file, the least any validating
import must do. Prints cases/s for both and their ratio.

    python -m bench.bench_import              # 10,000 cases
    python -m bench.bench_import --cases 500  # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from handlers.datasets_import.base import ImportOptions
from handlers.datasets_import.pipeline import import_dataset
from infra.store import LocalStore
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


async def timed_import(root: Path, store_dir: Path, memory_kv: bool) -> tuple[float, int]:
    store = LocalStore(store_dir)
    opts = ImportOptions(name="bench", format="folder-csv", tenant="bench")
    if memory_kv:
        started = time.perf_counter()
        report = await import_dataset(store, MemoryRepo(), root, opts)  # type: ignore[arg-type]
        return time.perf_counter() - started, report.num_cases if report.registered else -1
    from infra.bus.topology import apply, connect
    from infra.kv import DatasetRepo
    from infra.settings import Settings
    from radtrain.servers.nats import start_nats

    proc, url = start_nats(store_dir.parent / "nats", port=0, sync_always=False)
    try:
        settings = Settings(nats_url=url)
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


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--memory-kv", action="store_true", help="skip nats-server")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of text")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="radtrain-bench-import-"))
    try:
        t0 = time.perf_counter()
        write_cases(tmp / "src", args.cases)
        generated = time.perf_counter() - t0
        bound_s = header_bound(tmp / "src")
        import_s, cases = asyncio.run(timed_import(tmp / "src", tmp / "store", args.memory_kv))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"cases": cases, "import_s": round(import_s, 3),
              "import_cases_per_s": round(cases / import_s, 1),
              "header_bound_cases_per_s": round(args.cases / bound_s, 1),
              "ratio": round((cases / import_s) / (args.cases / bound_s), 3),
              "generate_s": round(generated, 2)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"import of {cases} cases ({SIZE}x{SIZE} CT DICOM, folder-csv): "
              f"{result['import_s']:.2f} s = {result['import_cases_per_s']:.0f} cases/s")
        print(f"bound (bare pydicom header reads, same files): "
              f"{result['header_bound_cases_per_s']:.0f} cases/s")
        print(f"ratio import/bound: {result['ratio']:.3f}")
    return result


if __name__ == "__main__":
    main()
