"""Every file of pydicom's own test corpus previews or fails with a clear per-file error.

The sweep runs in a child process: a decoder that crashed the interpreter
(a C extension's segfault) would otherwise take pytest down with it instead
of failing this test. Bounded in time by the child's timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array

ROOT = Path(__file__).resolve().parents[3]
SWEEP = r"""
import json, sys, warnings
from pathlib import Path
from pydicom.data import get_testdata_files
from imaging.preview import render_files
from imaging.reader import CaseReadError
warnings.simplefilter("ignore")
for f in sorted(get_testdata_files()):
    path = Path(f)
    if not path.is_file():
        continue
    try:
        png = render_files(path, size=64, source=path.name)
        row = {"file": path.name, "ok": png.startswith(b"\x89PNG")}
    except CaseReadError as exc:
        row = {"file": path.name, "ok": False, "kind": exc.kind, "error": exc.message}
    except Exception as exc:
        row = {"file": path.name, "ok": False, "crash": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(row), flush=True)
"""
DECODES = ("MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_gdcm.dcm", "JPEG2000.dcm",
           "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm", "CT_small.dcm",
           "MR_small_bigendian.dcm", "image_dfl.dcm", "JPEGLSNearLossless_16.dcm")


def test_whole_corpus_previews_or_gives_a_clear_per_file_error() -> None:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SWEEP], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) > 100
    crashes = [r for r in rows if "crash" in r]
    assert not crashes, crashes
    for row in rows:
        if not row["ok"]:
            assert row["error"].startswith(f"{row['file']}: ") and len(row["error"]) > 20, row
    ok = {r["file"] for r in rows if r["ok"]}
    assert set(DECODES) <= ok
    kinds = {r["file"]: r.get("kind") for r in rows}
    assert kinds["MR_truncated.dcm"] == "truncated"
    assert kinds["rtplan.dcm"] == "no_pixel_data"
    assert kinds["README.txt"] == "not_image"
    assert time.monotonic() - started < 90


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_gdcm.dcm",
                                  "JPEGLSNearLossless_08.dcm"])
def test_jpeg_ls_and_jpeg_lossless_decode_with_gdcm(name: str) -> None:
    """python-gdcm is the codec for these syntaxes; it must agree with pylibjpeg."""
    path = get_testdata_file(name)
    with_gdcm = pixel_array(path, decoding_plugin="gdcm")
    assert with_gdcm.size > 0
    assert (with_gdcm == pixel_array(path, decoding_plugin="pylibjpeg")).all()
