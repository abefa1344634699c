"""The same upstream path, tried as a new user would in JavaScript: the CloudEvents
JavaScript SDK (``cloudevents`` on npm) builds a ``task.requested`` with an extension
attribute and ``dataschema``, and the NATS client (``nats`` on npm) publishes it on the
tenant's inbound subject as an upstream NKey user, structured and in binary mode.

The npm packages are installed once into ``.radtrain/npm`` (git-ignored); the test
skips, saying why, where node or npm is missing or the registry cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path

import pytest

from tests.support.nats_users import NatsUsers
from tests.support.upstream_stack import SCHEMA, Stack, reached, requested, stack, task_data

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "support" / "js"
CACHE = ROOT / ".radtrain" / "npm"
SCRIPT = "publish_upstream.mjs"

__all__ = ["stack"]  # the fixture


async def _run(*argv: str, cwd: Path, env: dict[str, str] | None = None,
               timeout_s: float = 240.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"{argv[0]} timed out after {timeout_s:.0f} s"
    return proc.returncode or 0, out.decode(errors="replace")


async def js_sdk() -> Path:
    """The npm folder with the SDK installed (once per package.json); skips if it cannot be."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the JavaScript SDK test (node >= 18)")
    CACHE.mkdir(parents=True, exist_ok=True)
    wanted = (SOURCE / "package.json").read_text()
    have = CACHE / "package.json"
    installed = all((CACHE / "node_modules" / p / "package.json").exists()
                    for p in ("cloudevents", "nats"))
    if not installed or not have.exists() or have.read_text() != wanted:
        have.write_text(wanted)
        code, out = await _run(npm, "install", "--no-audit", "--no-fund", "--silent",
                               cwd=CACHE)
        if code != 0:
            pytest.skip(f"npm install of cloudevents and nats failed (no registry?): "
                        f"{out[-500:]}")
    shutil.copyfile(SOURCE / SCRIPT, CACHE / SCRIPT)
    return CACHE


@pytest.mark.parametrize("mode", ["structured", "binary"])
async def test_js_sdk_event_over_nats_reaches_ready(
        stack: Stack, nats_users: NatsUsers, mode: str) -> None:
    folder = await js_sdk()
    creds = nats_users.add_upstream(stack.tenant)
    assert creds.seed_file is not None
    task_id = f"js-{mode}-{uuid.uuid4().hex[:8]}"
    event = {"type": "radtrain.task.requested.v1", "source": "urn:js:bridge", "subject": task_id,
             "datacontenttype": "application/json", "dataschema": SCHEMA, "site": "east",
             "data": task_data(task_id, stack.dataset_id)}
    env = {"PATH": str(Path(shutil.which("node") or "node").parent), "NATS_URL": creds.url,
           "NKEY_SEED_FILE": str(creds.seed_file), "INBOX_PREFIX": creds.inbox_prefix,
           "SUBJECT": creds.subject, "MODE": mode, "EVENT": json.dumps(event)}
    code, out = await _run("node", SCRIPT, cwd=folder, env=env, timeout_s=60)
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1])["stream"] == "INBOUND", out
    await reached(stack, task_id)
    published = await requested(stack.js, task_id)
    assert published.extensions == {"site": "east"} and published.dataschema == SCHEMA
    assert published.data.tenant == stack.tenant and published.source == "urn:js:bridge"
