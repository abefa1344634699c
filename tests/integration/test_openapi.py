"""The OpenAPI 3.1 document, the docs page, and a bounded schemathesis run against a
live gateway process on a real nats-server."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.auth import PUBLIC_PATHS
from gateway.console import PUBLIC as CONSOLE_PUBLIC
from gateway.openapi import OPERATIONS, document
from infra.settings import Settings
from radtrain.stack import Stack, start_stack
from tests.support.nats_users import start_authenticated_nats
from tests.support.tenancy_utils import apply_streams, gateway_client, issue_key

pytestmark = pytest.mark.integration

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")


def test_document_is_openapi_31_from_the_models() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    assert {"TaskRequest", "TaskRecord", "TaskPage", "ErrorBody", "WebhookCreate",
            "DeliveryPage", "TaskRequestedEvent"} <= set(schemas)
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', str(doc).replace("'", '"')))
    assert refs <= set(schemas), refs - set(schemas)  # every $ref resolves
    submit = doc["paths"]["/v1/tasks"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TaskRequest"}
    assert {"202", "401", "413", "415", "422", "429"} <= set(submit["responses"])
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["security"] == [{"bearerAuth": []}]


def test_every_route_is_documented_and_public_ones_match() -> None:
    app = create_app(Settings())
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    documented = {(op.method, op.path) for op in OPERATIONS}
    assert routes == documented, "add the route to gateway/openapi.py OPERATIONS"
    assert {op.path for op in OPERATIONS if op.public} == PUBLIC_PATHS | CONSOLE_PUBLIC


async def test_served_document_and_docs_page(nats_server: str, tmp_path: Path) -> None:
    settings = Settings(nats_url=nats_server, store_dir=tmp_path)
    await apply_streams(settings)
    async with gateway_client(settings) as client:
        c: TestClient = client
        resp = await c.get("/openapi.json")
        assert resp.status == 200 and (await resp.json())["openapi"] == "3.1.0"
        page = await c.get("/docs")
        assert page.status == 200 and page.content_type == "text/html"
        text = await page.text()
        assert "/v1/webhooks/{webhook_id}/deliveries" in text and "<script" not in text


@pytest.fixture(scope="module")
def fuzz_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A NATS of its own: the fuzzer's webhooks (to hosts like ``0.com``) must not
    queue up in the deliverer of other tests that share the session's server."""
    users = start_authenticated_nats(tmp_path_factory.mktemp("fuzz-nats"), port=0,
                                     sync_always=False)
    yield users.services_url
    users.stop()


@pytest.fixture(scope="module")
def live_gateway(fuzz_nats: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``python -m gateway`` as in production; rate limit high enough for the fuzzer."""
    data = tmp_path_factory.mktemp("openapi")
    settings = Settings(nats_url=fuzz_nats, data_dir=data, store_dir=data / "store",
                        gateway_port=0, rate_limit_per_s=10_000, rate_limit_burst=10_000,
                        max_request_bytes=65_536, log_level="WARNING")
    stack = start_stack(settings, embedded_nats=False, services=("gateway",))
    yield stack
    stack.stop()


def test_schemathesis_finds_no_5xx_and_no_response_breaking_the_document(
        live_gateway: Stack, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    # One worker: two threads have hit a CPython ast race inside schemathesis's coverage phase.
    cmd = [str(schemathesis), "run", f"{live_gateway.gateway_url}/openapi.json",
           "-H", f"Authorization: Bearer {live_gateway.api_key}", "--checks", CHECKS,
           "--max-examples", "8", "--max-time", "25", "--seed", "8", "--workers", "1",
           "--request-timeout", "10", "--report", "junit", "--report-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False,
                          cwd=tmp_path)  # it writes a .schemathesis/ cache in its cwd
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "15 selected" in done.stdout or "Operations:" in done.stdout


async def test_other_tenant_key_still_gets_its_own_empty_pages(
        fuzz_nats: str, live_gateway: Stack, tmp_path: Path) -> None:
    """The fuzzer's key is one tenant; a fresh tenant sees none of its objects."""
    settings = Settings(nats_url=fuzz_nats, store_dir=tmp_path)
    async with gateway_client(settings, await issue_key(settings, "fresh-tenant")) as client:
        for path in ("/v1/tasks", "/v1/webhooks"):
            assert (await (await client.get(path)).json())["total"] == 0
