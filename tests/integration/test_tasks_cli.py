"""``radtrain tasks ...``, ``watch`` and the exit codes, against a real gateway and NATS.

The gateway runs on a real port in a thread (tests/support/cli_stack.py) with the
projector, so the records are those the events make; each verb runs through
typer's CliRunner with the tenant's API key, as on-call would run it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from infra.settings import Settings
from radtrain.cli.main import app
from tests.support.cli_stack import Seeded, cli_stack, seed_tasks
from tests.support.tenancy_utils import issue_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def stack(nats_server: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Settings, str]]:
    settings = Settings(nats_url=nats_server, store_dir=tmp_path_factory.mktemp("cli-store"),
                        api_key_cache_s=0)
    with cli_stack(settings) as url:
        yield settings, url


@pytest.fixture(scope="module")
def world(stack: tuple[Settings, str]) -> dict[str, Any]:
    settings, url = stack
    tenant = f"oncall{int(time.time() * 1000) % 10**8}"
    key = asyncio.run(issue_key(settings, tenant))
    other = asyncio.run(issue_key(settings, tenant + "x"))
    seeded = seed_tasks(settings, tenant)
    world = {"url": url, "key": key, "other": other, "seeded": seeded, "tenant": tenant}
    _wait_projected(world, seeded)
    return world


def cli(world: dict[str, Any], *args: str, key: str | None = None) -> Any:
    env = {"RADTRAIN_API_KEY": key or world["key"], "COLUMNS": "200"}
    return CliRunner().invoke(app, [*args, "--url", world["url"]], env=env)


def _wait_projected(world: dict[str, Any], seeded: Seeded) -> None:
    want = {seeded.completed: "completed", seeded.running: "running", seeded.failed: "failed"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = cli(world, "tasks", "list", "--json")
        if out.exit_code == 0:
            got = {r["task_id"]: r["state"] for r in json.loads(out.stdout)["items"]}
            if all(got.get(t) == s for t, s in want.items()):
                return
        time.sleep(0.2)
    raise AssertionError(f"records not projected: {out.output}")


def test_list_and_show(world: dict[str, Any]) -> None:
    s: Seeded = world["seeded"]
    listed = cli(world, "tasks", "list", "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout)["total"] == 3
    failed = json.loads(cli(world, "tasks", "list", "--state", "failed", "--json").stdout)
    assert [r["task_id"] for r in failed["items"]] == [s.failed]
    human = cli(world, "tasks", "list")
    assert human.exit_code == 0 and s.running in human.stdout and "running" in human.stdout
    shown = cli(world, "tasks", "show", s.completed, "--json")
    assert shown.exit_code == 0, shown.output
    rec = json.loads(shown.stdout)
    assert rec["state"] == "completed" and rec["metrics"] == {"auc": 0.91}
    text = cli(world, "tasks", "show", s.failed)
    assert text.exit_code == 0 and "runner_failures" in text.stdout


def test_not_found_other_tenant_and_unavailable_exit_codes(world: dict[str, Any]) -> None:
    s: Seeded = world["seeded"]
    missing = cli(world, "tasks", "show", "no-such-task")
    assert missing.exit_code == 3 and "not found" in missing.stderr and not missing.stdout
    foreign = cli(world, "tasks", "show", s.completed, key=world["other"])
    assert foreign.exit_code == 3  # another tenant's task is not found, as in the API
    assert json.loads(cli(world, "tasks", "list", "--json", key=world["other"]).stdout
                      )["total"] == 0
    bad_key = cli(world, "tasks", "list", key="rt_nope")
    assert bad_key.exit_code == 1 and "401" in bad_key.stderr
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    down = CliRunner().invoke(app, ["tasks", "list", "--url", dead],
                              env={"RADTRAIN_API_KEY": world["key"]})
    assert down.exit_code == 4 and "unreachable" in down.stderr
    usage = cli(world, "tasks", "list", "--limit", "0")
    assert usage.exit_code == 2


def test_logs_prints_history_and_stops(world: dict[str, Any]) -> None:
    s: Seeded = world["seeded"]
    out = cli(world, "tasks", "logs", s.completed, "--json")
    assert out.exit_code == 0, out.output
    names = [json.loads(line)["event"] for line in out.stdout.splitlines()]
    assert names == ["requested", "ready", "started", "completed"]
    started = time.monotonic()
    running = cli(world, "tasks", "logs", s.running, "--idle", "0.5")
    assert running.exit_code == 0 and time.monotonic() - started < 10
    assert "progress" in running.stdout and "epoch=1" in running.stdout
    assert cli(world, "tasks", "logs", "no-such-task").exit_code == 3


def test_download_checks_sha256(world: dict[str, Any], tmp_path: Path) -> None:
    s: Seeded = world["seeded"]
    out = cli(world, "tasks", "download", s.completed, "model.safetensors", "-o",
              str(tmp_path), "--json")
    assert out.exit_code == 0, out.output
    [got] = json.loads(out.stdout)
    body = (tmp_path / "model.safetensors").read_bytes()
    assert body == b"weights" and got["sha256"] == hashlib.sha256(body).hexdigest()
    everything = cli(world, "tasks", "download", s.completed, "-o", str(tmp_path / "all"))
    assert everything.exit_code == 0 and (tmp_path / "all" / "spec.json").is_file()
    assert cli(world, "tasks", "download", s.completed, "nope.bin", "-o",
               str(tmp_path)).exit_code == 3
    assert cli(world, "tasks", "download", s.running, "-o", str(tmp_path)).exit_code == 3


def test_cancel_running_and_refuse_finished(world: dict[str, Any]) -> None:
    s: Seeded = world["seeded"]
    out = cli(world, "tasks", "cancel", s.running, "--reason", "stuck", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["task_id"] == s.running
    done = cli(world, "tasks", "cancel", s.completed)
    assert done.exit_code == 1 and "already completed" in done.stderr


def test_rerun_submits_the_spec_again(world: dict[str, Any]) -> None:
    s: Seeded = world["seeded"]
    dry = cli(world, "tasks", "rerun", s.completed, "--dry-run")
    assert dry.exit_code == 0, dry.output
    body = json.loads(dry.stdout)
    assert body["flow"] == "general" and body["dataset_id"] == s.dataset_id
    assert body["model"]["network"].startswith("mobilenetv3_small_100")
    assert body["tuning"]["mode"] == "manual" and body["tuning"]["hyperparameters"]["epochs"]
    assert f"rerun of task {s.completed}" in body["description"]
    out = cli(world, "tasks", "rerun", s.completed, "--json")
    assert out.exit_code == 0, out.output
    new = json.loads(out.stdout)
    assert new["rerun_of"] == s.completed and new["task_id"] != s.completed
    assert cli(world, "tasks", "rerun", s.failed).exit_code == 1  # no spec.json
    assert cli(world, "tasks", "rerun", s.running).exit_code == 1  # not finished
    assert cli(world, "tasks", "rerun", "no-such-task").exit_code == 3


def test_watch_exit_codes(world: dict[str, Any]) -> None:
    s: Seeded = world["seeded"]
    done = cli(world, "watch", s.completed, "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["state"] == "completed"
    assert cli(world, "watch", s.failed, "--json").exit_code == 1
    missing = cli(world, "watch", "no-such-task")
    assert missing.exit_code == 3 and "404" in missing.stderr  # was 2 (a usage error)


def test_version_and_completion() -> None:
    from importlib.metadata import version

    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0 and out.stdout.strip() == f"radtrain {version('radtrain')}"
    helped = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in helped.stdout and "3 not found" in helped.stdout
    for verb in ("list", "show", "logs", "download", "cancel", "rerun"):
        sub = CliRunner().invoke(app, ["tasks", verb, "--help"], env={"COLUMNS": "200"})
        assert "--json" in sub.stdout, verb
    exe = str(Path(sys.executable).parent / "radtrain")
    script = subprocess.run([exe, "--show-completion", "bash"], capture_output=True, text=True,
                            timeout=60, check=True).stdout
    assert "_radtrain_completion" in script  # what --install-completion writes to ~/.bashrc
    done = subprocess.run([exe], capture_output=True, text=True, timeout=60, env={
        **os.environ, "_RADTRAIN_COMPLETE": "complete_bash", "COMP_WORDS": "radtrain ta",
        "COMP_CWORD": "1"})
    assert done.stdout.split() == ["tasks"]
