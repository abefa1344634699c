"""docs/runbook.md cannot rot: every ``$ radtrain ...`` line of its console blocks runs
against a test stack and must exit with the code written next to it (``# exit N``).

Each block is preceded by ``<!-- runbook: MODE -->``: ``healthy`` (gateway, projector,
NATS as the on-call identity), ``nats-down`` (``RADTRAIN_NATS_URL`` points at a port
nobody listens on) or ``s3-down`` (a second gateway whose S3 endpoint is dead).
Placeholders (``<task-id>``, ``<stuck-task-id>``, ``<failed-task-id>``, ``<dlq-seq>``)
become the seeded tasks and dead letter.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from infra.bus import dead_letters as dlq
from infra.bus.topology import ENRICH, TASKS_STREAM, connect
from infra.settings import Settings
from radtrain.cli.main import app
from tests.support.cli_stack import Seeded, cli_stack, seed_tasks
from tests.support.nats_users import NatsUsers
from tests.support.tenancy_utils import issue_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "runbook.md"
SITUATIONS = ("A stuck task", "A growing dead-letter queue", "A runner that keeps dying",
              "NATS down", "S3 down")
BLOCK = re.compile(r"<!-- runbook: (?P<mode>[a-z0-9-]+) -->\s*\n```console\n(?P<body>.*?)```",
                   re.DOTALL)
COMMAND = re.compile(r"^\$ (?P<cmd>radtrain .*?)\s+# exit (?P<code>\d)\s*$")
HTTP_VERBS = ("tasks", "watch")


@dataclass(frozen=True)
class Step:
    mode: str
    argv: list[str]
    exit_code: int
    line: str


def runbook_steps(text: str) -> list[Step]:
    steps = []
    for block in BLOCK.finditer(text):
        for line in block["body"].splitlines():
            if not line.startswith("$ "):
                continue
            found = COMMAND.match(line)
            assert found, f"runbook line without '# exit N': {line!r}"
            steps.append(Step(block["mode"], shlex.split(found["cmd"])[1:],
                              int(found["code"]), line))
    return steps


def test_runbook_covers_the_five_situations() -> None:
    text = RUNBOOK.read_text()
    for title in SITUATIONS:
        assert re.search(rf"^## \d\. {title}$", text, re.MULTILINE), title
    assert text.count("```console") == len(BLOCK.findall(text)), "a block without a mode"
    modes = {s.mode for s in runbook_steps(text)}
    assert modes == {"healthy", "nats-down", "s3-down"}


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def stacks(nats_users: NatsUsers, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, Any]]:
    store = tmp_path_factory.mktemp("runbook-store")
    healthy = Settings(nats_url=nats_users.services_url, store_dir=store, api_key_cache_s=0)
    s3_down = Settings(nats_url=nats_users.services_url, store_dir=store, api_key_cache_s=0,
                       store_backend="s3", s3_endpoint_url=f"http://127.0.0.1:{_dead_port()}",
                       s3_access_key_id="runbook", s3_secret_access_key="runbook",
                       s3_retry_budget_s=1.0)
    with cli_stack(healthy) as url, cli_stack(s3_down) as s3_down_url:
        tenant = f"runbook{int(time.time() * 1000) % 10**8}"
        seeded = seed_tasks(healthy, tenant)
        yield {"settings": healthy, "url": url, "s3_down_url": s3_down_url,
               "key": asyncio.run(issue_key(healthy, tenant)), "seeded": seeded,
               "dlq_seq": asyncio.run(_dead_letter(healthy, seeded.failed)),
               "oncall": nats_users.oncall_url}


async def _dead_letter(settings: Settings, task_id: str) -> int:
    """The failed task's request, dead-lettered by enrich (as the forwarder would)."""
    nc, js = await connect(settings, "test-runbook")
    try:
        original = await js.get_last_msg(TASKS_STREAM, f"tasks.requested.{task_id}")
        assert original.seq is not None
        adv = dlq.Advisory("max_deliveries", TASKS_STREAM, ENRICH, original.seq, 5)
        letter = dlq.build_dead_letter(adv, original, "weights not mirrored")
        return (await js.publish(letter.subject, letter.data, headers=letter.headers)).seq
    finally:
        await nc.close()


def _wait_projected(run: Any, seeded: Seeded) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if run(["tasks", "show", seeded.completed, "--json"]).exit_code == 0 and \
                '"running"' in run(["tasks", "show", seeded.running, "--json"]).stdout:
            return
        time.sleep(0.2)
    raise AssertionError("the seeded tasks were not projected")


def test_every_runbook_command_exits_as_documented(stacks: dict[str, Any]) -> None:
    s: Seeded = stacks["seeded"]
    values = {"<task-id>": s.completed, "<stuck-task-id>": s.running,
              "<failed-task-id>": s.failed, "<dlq-seq>": str(stacks["dlq_seq"])}
    dead_nats = f"nats://127.0.0.1:{_dead_port()}"

    def run(argv: list[str], mode: str = "healthy") -> Any:
        env = {"RADTRAIN_API_KEY": stacks["key"], "COLUMNS": "200",
               "RADTRAIN_STORE_DIR": str(stacks["settings"].store_dir),
               "RADTRAIN_NATS_URL": dead_nats if mode == "nats-down" else stacks["oncall"]}
        if argv[0] in HTTP_VERBS:
            argv = [*argv, "--url", stacks["s3_down_url" if mode == "s3-down" else "url"]]
        return CliRunner().invoke(app, argv, env=env)

    _wait_projected(run, s)
    steps = runbook_steps(RUNBOOK.read_text())
    assert len(steps) >= 15
    for step in steps:
        argv = [values.get(a, a) for a in step.argv]
        assert not any(a.startswith("<") and a.endswith(">") for a in argv), step.line
        started = time.monotonic()
        out = run(argv, step.mode)
        assert out.exit_code == step.exit_code, (
            f"{step.line}\n[{step.mode}] exit {out.exit_code}\nstdout: {out.stdout[-2000:]}"
            f"\nstderr: {out.stderr[-2000:]}\n{out.exception!r}")
        assert time.monotonic() - started < 30, f"{step.line} took too long"
        if step.exit_code in (3, 4):
            assert out.stderr.strip(), f"{step.line}: no reason on stderr"
        if step.exit_code == 4:  # what the runbook says the reader will see
            reason = {"nats-down": "NATS unreachable", "s3-down": "503"}[step.mode]
            assert reason in out.stderr, (step.line, out.stderr)
