"""``radtrain datasets import|list|show|preview`` against a real nats-server and local store."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from infra.settings import Settings
from infra.store import open_store
from radtrain.cli.main import app
from tests.support.dataset_utils import classification_folder, ct, write_png
from tests.support.import_worker import import_worker_thread

pytestmark = pytest.mark.integration


def test_import_list_show_preview(nats_server: str, tmp_path: Path) -> None:
    tenant = f"cli{uuid.uuid4().hex[:8]}"
    env = {"RADTRAIN_NATS_URL": nats_server, "RADTRAIN_STORE_DIR": str(tmp_path / "store"),
           "RADTRAIN_DEFAULT_TENANT": tenant}
    runner = CliRunner()

    def cli(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, list(args), env=env)
        return result.exit_code, result.output

    assert cli("infra", "apply")[0] == 0
    settings = Settings(nats_url=nats_server, store_dir=tmp_path / "store")
    src = classification_folder(tmp_path / "src")
    bad = classification_folder(tmp_path / "bad", n=4)
    (bad / "images" / "c3.dcm").write_bytes(b"nope" * 40)
    with import_worker_thread(settings):  # the handlers process's import consumer
        # a job: the folder is uploaded, imported by the worker, followed to its report
        code, out = cli("datasets", "import", str(src), "--name", "Head CT", "--format",
                        "folder-csv", "--id", f"ct-{tenant}")
        assert code == 0, out
        assert "registered, 6 cases" in out and "finding" in out
        code, out = cli("datasets", "import", str(bad), "--name", "bad", "--format",
                        "folder-csv", "--skip-bad", "--json")
        report = json.loads(out)
        assert code == 0 and report["num_cases"] == 3
        assert report["skipped"][0]["case_id"] == "c3"
    # the uploads were for the jobs only: removed once they finished
    assert open_store(settings).list(f"imports/{tenant}/") == []

    # --local: the same pipeline in this process, no handlers needed
    code, out = cli("datasets", "import", str(bad), "--name", "bad", "--format", "folder-csv",
                    "--local")
    assert code == 1 and "NOT registered" in out and "[not_image] case c3" in out
    code, out = cli("datasets", "import", str(bad), "--name", "x", "--format", "dicomdir")
    assert code != 0

    seg = tmp_path / "seg"
    ct(seg / "images" / "s1.dcm", size=16)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 1
    write_png(seg / "masks" / "s1.png", mask)
    assert cli("datasets", "import", str(seg), "--name", "seg", "--format", "masks",
               "--local")[0] == 0

    code, out = cli("datasets", "list", "--task-type", "classification", "--json")
    listed = json.loads(out)
    assert code == 0 and {d["annotation_type"] for d in listed} == {"single_label"}
    assert len(listed) == 2
    code, out = cli("datasets", "list", "--task-type", "segmentation", "--json")
    assert [d["name"] for d in json.loads(out)] == ["seg"]

    code, out = cli("datasets", "show", f"ct-{tenant}", "--cases", "2")
    assert code == 0 and "positive rate" in out and "16x16 (6)" in out and "c1:" in out
    assert cli("datasets", "show", f"ct-{tenant}", "--tenant", "someoneelse")[0] == 1

    target = tmp_path / "c1.png"
    code, out = cli("datasets", "preview", f"ct-{tenant}", "c1", "--window", "brain",
                    "--size", "64", "--out", str(target))
    assert code == 0, out
    assert Image.open(target).size == (64, 64)
    assert cli("datasets", "preview", f"ct-{tenant}", "nope")[0] == 1
