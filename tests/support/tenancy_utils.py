"""Helpers for tests that talk to the authenticated gateway: streams, keys, secrets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.tenancy import ApiKeyRepo, TenantRepo
from infra.bus.topology import apply, connect
from infra.security.sealing import load_seal_key
from infra.settings import Settings


async def apply_streams(settings: Settings) -> None:
    nc, js = await connect(settings, "test-apply")
    try:
        await apply(js, settings)
    finally:
        await nc.close()


async def issue_key(settings: Settings, tenant: str, name: str = "test") -> str:
    nc, js = await connect(settings, "test-keys")
    try:
        repo = await ApiKeyRepo.open(js, seal_key=load_seal_key(settings))
        return (await repo.create(tenant, name)).key
    finally:
        await nc.close()


async def inbound_secret(settings: Settings, tenant: str, overlap_s: float = 0.0) -> str:
    nc, js = await connect(settings, "test-secrets")
    try:
        repo = await TenantRepo.open(js, seal_key=load_seal_key(settings))
        return await repo.rotate_inbound(tenant, overlap_s)
    finally:
        await nc.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def gateway_client(settings: Settings, key: str | None = None,
                         **kwargs: Any) -> AsyncIterator[TestClient]:
    """An in-process gateway on a real NATS; ``key`` becomes a default header."""
    headers = bearer(key) if key else {}
    async with TestClient(TestServer(create_app(settings)), headers=headers, **kwargs) as c:
        yield c
