"""The browser tier: the web console in real headless Chromium on the embedded stack.

Debian's ``chromium`` (``/usr/bin/chromium``, or ``RADTRAIN_TEST_CHROMIUM``) driven
by Playwright's Python package through ``executable_path``: no browser is ever
downloaded. A missing browser fails every test here (``make test`` installs it);
nothing skips. Screenshots of each step land under ``test-output/browser/<test>/``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from rich.console import Console

from infra.bus.topology import connect
from infra.kv import DatasetRepo
from infra.settings import Settings
from infra.store import open_store
from radtrain.cli.demo import build_demo_dataset
from radtrain.servers.nats import free_port
from radtrain.stack import Stack, start_stack
from schemas.dataset import DatasetManifest, case_key
from tests.support.synthetic_annotated import annotated_manifest, generate_annotated_dataset

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "browser"
CHROMIUM = os.environ.get("RADTRAIN_TEST_CHROMIUM") or shutil.which("chromium") \
    or "/usr/bin/chromium"
QUIET = Console(quiet=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: the web console in headless Chromium")


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("console")
    settings = Settings(
        data_dir=data, store_dir=data / "store", cache_dir=data / "cache", work_dir=data / "work",
        gateway_port=0, nats_port=0, nats_sync_always=False, progress_interval_s=0.5,
        heartbeat_s=2.0, log_format="text",
        handlers_metrics_port=free_port(), runner_metrics_port=free_port())
    st = start_stack(settings)
    yield st
    st.stop()


@pytest.fixture(scope="package")
def datasets(stack: Stack) -> dict[str, str]:
    """Tiny synthetic datasets: head CT (classification, two of them), chest DX for the
    pneumothorax preset, CT with boxes."""
    tag = uuid.uuid4().hex[:6]
    out = {"ct": f"ct-{tag}", "ct_new": f"ct-new-{tag}", "ptx": f"ptx-{tag}",
           "boxes": f"boxes-{tag}"}
    build_demo_dataset(stack.settings, out["ct"], n_cases=24, seed=3, console=QUIET)
    build_demo_dataset(stack.settings, out["ct_new"], n_cases=20, seed=4, console=QUIET)
    build_demo_dataset(stack.settings, out["ptx"], n_cases=24, seed=5, console=QUIET, kind="ptx")
    register_annotated(stack, out["boxes"], "boxes")
    return out


def register_annotated(stack: Stack, dataset_id: str, kind: str) -> None:
    from handlers.datasets_import.register import register_dataset

    store = open_store(stack.settings)
    with tempfile.TemporaryDirectory() as tmp:
        cases = generate_annotated_dataset(Path(tmp), 12, seed=5, kind=kind)  # type: ignore[arg-type]
        for path in Path(tmp).iterdir():
            store.put_file(case_key(dataset_id, f"cases/{path.name}"), path)
    manifest = DatasetManifest.model_validate(annotated_manifest(
        dataset_id, stack.settings.default_tenant, cases, kind))  # type: ignore[arg-type]

    async def put() -> None:
        nc, js = await connect(stack.settings, "console-tests")
        try:
            await register_dataset(store, await DatasetRepo.open(js), manifest)
        finally:
            await nc.close()

    asyncio.run(put())


@pytest.fixture(scope="package")
def browser(stack: Stack, datasets: dict[str, str]) -> Iterator[Browser]:
    """After the stack and the datasets: Playwright's sync API runs an event loop in this
    thread until this package's tests end, so nothing here may call ``asyncio.run``
    afterwards (package scope: async tests of other folders run after it is stopped)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's chromium (`make test` does, as "
                    "root: apt-get install -y chromium) or set RADTRAIN_TEST_CHROMIUM")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


class Shots:
    """Numbered full-page screenshots of one test: test-output/browser/<test>/NN-<step>.png."""

    def __init__(self, page: Page, name: str) -> None:
        self.page, self.n = page, 0
        self.dir = SHOTS / re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, step: str) -> Path:
        self.n += 1
        path = self.dir / f"{self.n:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def console(browser: Browser, stack: Stack, request: pytest.FixtureRequest
            ) -> Iterator[tuple[Page, Shots]]:
    """A signed-in console page; JavaScript errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: _js_error(msg, errors))
    page.set_default_timeout(20_000)
    shots = Shots(page, request.node.name)
    sign_in(page, stack)
    yield page, shots
    context.close()
    assert not errors, errors


def _js_error(msg: ConsoleMessage, errors: list[str]) -> None:
    # Failed fetches (a 4xx the test provokes) are logged by Chromium as errors too.
    if msg.type == "error" and "Failed to load resource" not in msg.text:
        errors.append(msg.text)


def sign_in(page: Page, stack: Stack) -> None:
    page.goto(f"{stack.gateway_url}/console/")
    page.get_by_label("API key").fill(stack.api_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Tasks", exact=True)).to_be_visible()


def wait_state(page: Page, state: str, timeout_s: float = 180) -> None:
    """The task page's state badge reaches ``state`` (live, from the event stream)."""
    expect(page.locator("section > .row .state").first).to_have_text(
        state, timeout=timeout_s * 1000)


Step = Callable[[str], Any]
