"""The secret buckets trust only what the services sealed (infra/security/sealing.py).

NATS permissions keep on-call from reading ``apikeys``; they cannot keep a client
of the same account from writing there: the server does not check a publish's
reply subject against permissions. Shown here: on-call lands bytes under
``$KV.apikeys.<id>``. A record the services did not seal (a forgery of tenant
``victim``, put with the raw KV API as any such writer could) is refused by a
gateway holding the seal key, accepted by one without it; a key the services
issued keeps working.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest

from infra.bus.connection import inbox_prefix_for
from infra.bus.topology import connect
from infra.security.sealing import KEY_BYTES, Sealer, SealError
from infra.settings import Settings
from schemas.tenancy import ApiKeyRecord
from tests.support.nats_users import NatsUsers
from tests.support.tenancy_utils import apply_streams, bearer, gateway_client, issue_key

pytestmark = pytest.mark.integration


def forged_key() -> tuple[str, bytes]:
    key_id = secrets.token_hex(8)
    key = f"rt_{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKeyRecord(id=key_id, tenant="victim", name="forged",
                          sha256=hashlib.sha256(key.encode()).hexdigest(),
                          created_at=datetime.now(UTC))
    return key, record.model_dump_json().encode()


async def test_oncall_can_write_into_a_secret_bucket_through_a_reply_subject(
        nats_users: NatsUsers, tmp_path: Path) -> None:
    """Why sealing is needed: the permission layer stops reads, not this write."""
    settings = Settings(nats_url=nats_users.services_url, store_dir=tmp_path / "store")
    await apply_streams(settings)
    target = secrets.token_hex(8)
    oncall = await nats.connect(nats_users.oncall_url, allow_reconnect=False,
                                inbox_prefix=inbox_prefix_for("oncall"))
    try:
        await oncall.jetstream().publish(f"tasks.probe.{uuid.uuid4().hex}", b"x")
        await oncall.publish(f"tasks.probe.{uuid.uuid4().hex}", b"{}",
                             reply=f"$KV.apikeys.{target}")
        await oncall.flush()
    finally:
        await oncall.close()
    nc, js = await connect(settings, "test-sealed")
    try:
        entry = await (await js.key_value("apikeys")).get(target)
        assert entry.value is not None and b'"stream":"TASKS"' in entry.value
    finally:
        await nc.close()


async def test_a_record_the_services_did_not_seal_is_refused(
        nats_users: NatsUsers, tmp_path: Path) -> None:
    seal_file = tmp_path / "seal.key"
    seal_file.write_text(secrets.token_hex(KEY_BYTES))
    sealed = Settings(nats_url=nats_users.services_url, store_dir=tmp_path / "store",
                      secrets_seal_key=seal_file)
    unsealed = sealed.model_copy(update={"secrets_seal_key": None})
    await apply_streams(sealed)
    good = await issue_key(sealed, "victim")
    key, payload = forged_key()
    nc, js = await connect(sealed, "test-sealed")
    try:
        await (await js.key_value("apikeys")).put(key[3:19], payload)
    finally:
        await nc.close()
    async with gateway_client(sealed) as client:
        assert (await client.get("/v1/tasks", headers=bearer(key))).status == 401
        assert (await client.get("/v1/tasks", headers=bearer(good))).status == 200
    async with gateway_client(unsealed) as client:  # what the seal prevents
        assert (await client.get("/v1/tasks", headers=bearer(key))).status == 200
        assert (await client.get("/v1/tasks", headers=bearer(good))).status == 401


def test_a_seal_binds_the_bucket_the_key_and_the_bytes() -> None:
    key = secrets.token_bytes(KEY_BYTES)
    sealer = Sealer(key, "apikeys")
    box = sealer.seal("k1", b'{"a":1}')
    assert sealer.open("k1", box) == b'{"a":1}'
    for bad in (lambda: sealer.open("k2", box),                       # moved to another key
                lambda: Sealer(key, "tenants").open("k1", box),       # to another bucket
                lambda: Sealer(secrets.token_bytes(32), "apikeys").open("k1", box),
                lambda: sealer.open("k1", box.replace(b'"a":1', b'"a":2')),
                lambda: sealer.open("k1", b'{"a":1}')):               # never sealed
        with pytest.raises(SealError):
            bad()
