"""Issue 17, decoding budget: hostile images are refused from their header, peak RSS stays
under the budget, and the estimate bounds what an honest decode really takes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from imaging.budget import DecodeBudget, DecodeBusy, OverBudget, decode_estimate
from imaging.reader import CaseReadError, read_header, read_image
from tests.support.hostile import SIDE, deflated_dicom, native_dicom, rle_dicom

BUDGET = 1 << 30  # the default per-request budget (Settings.decode_budget_request_bytes)

PROBE = """
import json, sys
from pathlib import Path
from typing import Any
from imaging.budget import DecodeBudget
from imaging.preview import render_files
from imaging.reader import CaseReadError
path, limit = Path(sys.argv[1]), int(sys.argv[2])
import imaging.budget as b
b.set_default_budget(DecodeBudget(limit, 2 * limit))
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)
startup = status("VmHWM")  # this program's own high-water mark so far (after exec)
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark: imports are done
out = {"base": status("VmRSS"), "startup": startup}
try:
    out["png"] = len(render_files(path, size=256, source="cases/evil/" + path.name))
except CaseReadError as exc:
    out.update(kind=exc.kind, message=exc.message)
out["peak"] = status("VmHWM")  # the high-water mark since the reset: this decode's
print(json.dumps(out))
"""


def probe(path: Path, limit: int = BUDGET) -> dict[str, Any]:
    """Render ``path`` in a fresh interpreter: its peak RSS is this decode's alone."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(path), str(limit)],
                          capture_output=True, text=True, timeout=120, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("build", [deflated_dicom, rle_dicom], ids=["deflate", "rle"])
def test_hostile_compressed_dicom_is_refused_with_rss_under_the_budget(
        build: object, tmp_path: Path) -> None:
    path = build(tmp_path / "evil.dcm")  # type: ignore[operator]
    assert path.stat().st_size < 10 << 20  # a few MB on disk ...
    would_need = decode_estimate(SIDE, SIDE, bits=8)
    assert SIDE * SIDE < 512 << 20 < would_need and would_need > 8 * BUDGET  # ... GiB decoded
    out = probe(path)
    assert out["kind"] == "too_large", out
    assert "cases/evil/evil.dcm" in str(out["message"]) and "MiB" in str(out["message"])
    # The process's whole life (not getrusage's ru_maxrss: after fork + exec it can report
    # the parent's, a pytest session of GBs): start-up, then the decode's own peak.
    assert max(int(out["startup"]), int(out["peak"])) < BUDGET, out
    assert int(out["peak"]) - int(out["base"]) < 64 << 20, out  # the refusal itself: ~nothing


def test_the_estimate_bounds_an_honest_decode_and_render(tmp_path: Path) -> None:
    """Every intermediate array is counted: the real growth of the peak stays below it."""
    side = 4096  # large enough to dwarf the interpreter's own peak
    path = native_dicom(tmp_path / "honest.dcm", side, bits=16)
    out = probe(path)
    assert out.get("png"), out
    estimate = decode_estimate(side, side, bits=16, file_bytes=path.stat().st_size)
    grew = int(out["peak"]) - int(out["base"])
    assert 64 << 20 < grew <= estimate, (grew, estimate)


def test_a_small_budget_refuses_what_the_default_allows(tmp_path: Path) -> None:
    path = native_dicom(tmp_path / "mid.dcm", 512)
    assert read_image(path).pixels.shape == (512, 512)
    small = DecodeBudget(request_bytes=1 << 20, process_bytes=4 << 20)
    for read in (read_image, read_header):  # the import checks headers: refused there too
        with pytest.raises(CaseReadError) as info:
            read(path, budget=small, source="cases/c1/mid.dcm")  # type: ignore[operator]
        assert info.value.kind == "too_large" and "cases/c1/mid.dcm" in info.value.message


def test_rescale_is_float32_and_exact(tmp_path: Path) -> None:
    image = read_image(native_dicom(tmp_path / "r.dcm", 8))
    assert image.pixels.dtype.name == "float32"
    assert image.pixels.ravel()[:3].tolist() == [-1024.0, -1023.5, -1023.0]  # 0.5 * v - 1024


def test_process_budget_makes_decodes_wait_then_busy() -> None:
    budget = DecodeBudget(request_bytes=100, process_bytes=150, wait_s=0.2)
    with pytest.raises(OverBudget):
        budget.check(101)
    with budget.reserve(100):
        assert budget.in_use == 100
        started = time.monotonic()
        with pytest.raises(DecodeBusy):
            with budget.reserve(60):
                pass
        assert time.monotonic() - started >= 0.2
        with budget.reserve(50):  # what fits goes at once
            assert budget.in_use == 150
    got: list[float] = []
    outer = budget.reserve(100)
    outer.__enter__()

    def second() -> None:
        with budget.reserve(100):
            got.append(time.monotonic())

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.05)
    released = time.monotonic()
    outer.__exit__(None, None, None)
    thread.join(2)
    assert got and got[0] >= released and budget.in_use == 0
