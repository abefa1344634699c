"""NATS authentication and permissions on a real nats-server (DESIGN.md §10, issue 12).

Identities: ``services`` (everything), ``oncall`` (everything but the secret KV
buckets), and upstream users bound to one tenant (publish on their inbound
subject, receive their own publish acks, nothing else).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import trustme
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig, StreamSource
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from typer.testing import CliRunner

from infra.bus.connection import connect_options
from infra.bus.topology import INBOUND_STREAM, KV_TASKS, TASKS_STREAM, apply
from infra.settings import Settings
from radtrain.cli.main import app as cli_app
from radtrain.servers.nats import NatsTLS, ServerStartError, start_nats
from radtrain.servers.nats_auth import SECRET_BUCKETS, reload_nats
from radtrain.stack import start_local_nats
from tests.support.nats_users import NatsUsers, UpstreamCreds, start_authenticated_nats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REFUSED = 0.5  # seconds a refused JetStream request is given before it counts as refused


class Errors:
    """The async errors (permission violations) the server sent one connection."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def on_error(self, exc: Exception) -> None:
        self.seen.append(str(exc).lower())

    async def violation(self, verb: str, subject: str, within_s: float = 2.0) -> None:
        needle = f'permissions violation for {verb} to "{subject.lower()}"'
        deadline = asyncio.get_running_loop().time() + within_s
        while not any(needle in e for e in self.seen):
            assert asyncio.get_running_loop().time() < deadline, (needle, self.seen)
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def services(nats_server: str) -> AsyncIterator[tuple[Client, JetStreamContext]]:
    settings = Settings(nats_url=nats_server)
    nc = await nats.connect(**connect_options(settings), name="test-nats-auth")
    js = nc.jetstream()
    await apply(js, settings)
    yield nc, js
    await nc.close()


@pytest.fixture
async def secret(services: tuple[Client, JetStreamContext]) -> AsyncIterator[tuple[str, bytes]]:
    """A marker value in every secret bucket under one key; purged afterwards."""
    _, js = services
    key, value = f"authz-{uuid.uuid4().hex}", f"s3cret-{uuid.uuid4().hex}".encode()
    for bucket in SECRET_BUCKETS:
        await (await js.key_value(bucket)).put(key, value)
    yield key, value
    for bucket in SECRET_BUCKETS:
        await (await js.key_value(bucket)).purge(key)


async def connect_upstream(creds: UpstreamCreds) -> tuple[Client, Errors]:
    errors = Errors()
    return await creds.connect(error_cb=errors.on_error), errors


async def refused_request(js: JetStreamContext, call: Any) -> None:
    with pytest.raises((TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await asyncio.wait_for(call(js), REFUSED * 3)


# --- who may connect -------------------------------------------------------------------


async def refused_connection(url: str) -> None:
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0,
                           connect_timeout=3.0)



async def test_unauthenticated_and_wrong_password_are_refused(nats_users: NatsUsers) -> None:
    for url in (nats_users.url, nats_users.services_url.replace("services:", "services:x")):
        await refused_connection(url)


async def test_services_may_do_everything(services: tuple[Client, JetStreamContext],
                                          secret: tuple[str, bytes]) -> None:
    _, js = services
    key, value = secret
    for bucket in SECRET_BUCKETS:
        assert (await (await js.key_value(bucket)).get(key)).value == value
    name = f"AUTHZ_{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"authz.{name}.>"]))
    await js.delete_stream(name)


# --- upstream users ---------------------------------------------------------------------


async def test_upstream_user_publishes_on_its_subject_only(
        nats_users: NatsUsers, services: tuple[Client, JetStreamContext]) -> None:
    _, sjs = services
    a, b = nats_users.add_upstream("authz-a"), nats_users.add_upstream("authz-b")
    assert (a.subject, a.inbox_prefix) == ("inbound.authz-a.task.requested", f"_INBOX_{a.user}")
    nc, errors = await connect_upstream(a)
    try:
        js = nc.jetstream(timeout=REFUSED)
        ack = await js.publish(a.subject, b'{"probe": 1}')  # the JetStream ack reaches it
        assert ack.stream == INBOUND_STREAM
        await refused_request(js, lambda j: j.publish(b.subject, b"as tenant b"))
        await errors.violation("publish", b.subject)
        task_subject = f"tasks.requested.{uuid.uuid4().hex}"
        await refused_request(js, lambda j: j.publish(task_subject, b"{}"))
        await errors.violation("publish", task_subject)
        with pytest.raises(NotFoundError):
            await sjs.get_last_msg(INBOUND_STREAM, b.subject)
        with pytest.raises(NotFoundError):
            await sjs.get_last_msg(TASKS_STREAM, task_subject)
    finally:
        await nc.close()
        for creds in (a, b):
            await sjs.purge_stream(INBOUND_STREAM, subject=creds.subject)


async def test_upstream_reply_subjects_cannot_write_into_the_services_account(
        nats_users: NatsUsers, services: tuple[Client, JetStreamContext],
        secret: tuple[str, bytes]) -> None:
    """Within one account the stream's ack would go to any reply subject the publisher
    names ($KV.apikeys.<id>, tasks.…); across the service import it stays in UPSTREAM."""
    _, sjs = services
    key, value = secret
    creds = nats_users.add_upstream("authz-reply")
    victim = f"tasks.requested.{uuid.uuid4().hex}"
    nc, _ = await connect_upstream(creds)
    try:
        for reply in (f"$KV.apikeys.{key}", f"$KV.tenants.{key}", victim):
            await nc.publish(creds.subject, b'{"probe": 4}', reply=reply)
        await nc.flush()
        await asyncio.sleep(0.5)
        for bucket in ("apikeys", "tenants"):
            assert (await (await sjs.key_value(bucket)).get(key)).value == value
        with pytest.raises(NotFoundError):
            await sjs.get_last_msg(TASKS_STREAM, victim)
        stored = await sjs.get_last_msg(INBOUND_STREAM, creds.subject)
        assert stored.data == b'{"probe": 4}'  # the messages themselves were accepted
    finally:
        await nc.close()
        await sjs.purge_stream(INBOUND_STREAM, subject=creds.subject)


async def test_upstream_user_reads_nothing(nats_users: NatsUsers,
                                           services: tuple[Client, JetStreamContext],
                                           secret: tuple[str, bytes]) -> None:
    a, other = nats_users.add_upstream("authz-r"), nats_users.add_upstream("authz-s")
    nc, errors = await connect_upstream(a)
    try:
        js = nc.jetstream(timeout=REFUSED)
        for bucket in (KV_TASKS, *SECRET_BUCKETS):
            await refused_request(js, lambda j, b=bucket: j.key_value(b))
            await refused_request(js, lambda j, b=bucket: j.stream_info(f"KV_{b}"))
        got: list[str] = []

        async def collect(msg: Any) -> None:
            got.append(msg.subject)

        for subject in ("tasks.>", "$KV.tasks.>", "$KV.apikeys.>", "_INBOX.>",
                        f"{other.inbox_prefix}.>", ">", "inbound.>"):
            await nc.subscribe(subject, cb=collect)
            await errors.violation("subscription", subject)
        snc, _ = services
        await snc.publish(f"tasks.authz.{uuid.uuid4().hex}", b"x")
        await snc.publish(f"{other.inbox_prefix}.x", b"x")
        await snc.flush()
        await asyncio.sleep(0.3)
        assert got == []
    finally:
        await nc.close()


async def test_new_upstream_user_works_after_reload_without_restart(
        nats_users: NatsUsers, services: tuple[Client, JetStreamContext]) -> None:
    pid = nats_users.proc.pid
    creds = nats_users.add_upstream("authz-late", name=f"late-{uuid.uuid4().hex[:6]}")
    assert nats_users.proc.running() and nats_users.proc.pid == pid
    assert creds.seed_file is not None and creds.seed_file.stat().st_mode & 0o077 == 0
    nc, _ = await connect_upstream(creds)
    try:
        await nc.jetstream(timeout=5).publish(creds.subject, b'{"probe": 2}')
    finally:
        await nc.close()
        await services[1].purge_stream(INBOUND_STREAM, subject=creds.subject)


# --- on-call ---------------------------------------------------------------------------


async def oncall_connect(nats_users: NatsUsers) -> tuple[Client, Errors]:
    errors = Errors()
    opts = connect_options(Settings(nats_url=nats_users.oncall_url), identity="oncall")
    assert opts["inbox_prefix"] == "_INBOX_oncall"
    return await nats.connect(**opts, error_cb=errors.on_error, allow_reconnect=False), errors


async def test_oncall_reads_tasks_but_no_secret_bucket(
        nats_users: NatsUsers, services: tuple[Client, JetStreamContext],
        secret: tuple[str, bytes]) -> None:
    _, sjs = services
    key, _value = secret
    tasks = await sjs.key_value(KV_TASKS)
    await tasks.put(key, b"{}")
    nc, errors = await oncall_connect(nats_users)
    try:
        js = nc.jetstream(timeout=REFUSED)
        assert (await (await js.key_value(KV_TASKS)).get(key)).value == b"{}"
        for bucket in SECRET_BUCKETS:
            stream = f"KV_{bucket}"
            kv = KeyValue(name=bucket, stream=stream, pre=f"$KV.{bucket}.", js=js, direct=True)
            await refused_request(js, lambda j, b=bucket: j.key_value(b))
            await refused_request(js, lambda j, s=stream: j.stream_info(s))
            await refused_request(js, lambda _j, k=kv: k.get(key))  # direct get
            await refused_request(js, lambda j, s=stream, b=bucket: j.get_last_msg(
                s, f"$KV.{b}.{key}", direct=False))
            await refused_request(js, lambda _j, k=kv: k.watch(key))  # consumer create
            await errors.violation("publish", f"$JS.API.STREAM.INFO.{stream}")
            await nc.subscribe(f"$KV.{bucket}.>")
            await errors.violation("subscription", f"$KV.{bucket}.>")
    finally:
        await nc.close()
        await tasks.purge(key)


async def test_oncall_cannot_copy_a_secret_bucket_into_a_new_stream(
        nats_users: NatsUsers, services: tuple[Client, JetStreamContext]) -> None:
    nc, errors = await oncall_connect(nats_users)
    name = f"COPY_{uuid.uuid4().hex[:8]}"
    try:
        js = nc.jetstream(timeout=REFUSED)
        await refused_request(js, lambda j: j.add_stream(StreamConfig(
            name=name, sources=[StreamSource(name="KV_apikeys")])))
        await errors.violation("publish", f"$JS.API.STREAM.CREATE.{name}")
        with pytest.raises(NotFoundError):
            await services[1].stream_info(name)
    finally:
        await nc.close()


async def test_oncall_wildcard_subscription_sees_no_secret_traffic(
        nats_users: NatsUsers, services: tuple[Client, JetStreamContext]) -> None:
    """``>`` is allowed, but the server filters what a deny matches at delivery:
    the services' secret KV writes and reads, and the answers on ``_INBOX.``."""
    snc, sjs = services
    nc, _ = await oncall_connect(nats_users)
    seen: list[tuple[str, bytes]] = []

    async def collect(msg: Any) -> None:
        seen.append((msg.subject, msg.data))

    key, marker = f"authz-{uuid.uuid4().hex}", f"leak-{uuid.uuid4().hex}".encode()
    try:
        await nc.subscribe(">", cb=collect)
        await nc.flush()
        kv = await sjs.key_value("apikeys")
        await kv.put(key, marker)
        assert (await kv.get(key)).value == marker
        await snc.publish("tasks.authz.visible", b"ok")
        await snc.flush()
        await asyncio.sleep(0.5)
        subjects = [s for s, _ in seen]
        assert "tasks.authz.visible" in subjects  # the subscription works
        assert not [s for s, d in seen if marker in d], subjects
        assert not [s for s in subjects if s.startswith("_INBOX.") or "apikeys" in s], subjects
    finally:
        await nc.close()
        await (await sjs.key_value("apikeys")).purge(key)


# --- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a CA that
    signed neither."""
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server, client = ca.issue_cert("127.0.0.1", "localhost"), ca.issue_cert("radtrain-client")
    files = {"ca": d / "ca.pem", "other_ca": d / "other-ca.pem", "cert": d / "server.pem",
             "key": d / "server.key", "client_cert": d / "client.pem",
             "client_key": d / "client.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    other.cert_pem.write_to_path(str(files["other_ca"]))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(files["cert"]), append=True)
    server.private_key_pem.write_to_path(str(files["key"]))
    for blob in client.cert_chain_pems:
        blob.write_to_path(str(files["client_cert"]), append=True)
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return files


async def try_connect(settings: Settings) -> None:
    nc = await nats.connect(**connect_options(settings), allow_reconnect=False,
                            max_reconnect_attempts=0, connect_timeout=3.0)
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()


async def test_tls_client_needs_the_ca(pki: dict[str, Path], tmp_path: Path) -> None:
    users = start_authenticated_nats(tmp_path / "nats", port=0, sync_always=False,
                                     tls=NatsTLS(cert=pki["cert"], key=pki["key"]))
    try:
        assert users.url.startswith("tls://")
        await try_connect(Settings(nats_url=users.services_url, nats_tls_ca=pki["ca"]))
        for ca in (None, pki["other_ca"]):
            with pytest.raises((OSError, nats.errors.Error)):
                await try_connect(Settings(nats_url=users.services_url, nats_tls_ca=ca))
    finally:
        users.stop()


async def test_mutual_tls_requires_a_client_certificate(pki: dict[str, Path],
                                                        tmp_path: Path) -> None:
    users = start_authenticated_nats(
        tmp_path / "nats", port=0, sync_always=False,
        tls=NatsTLS(cert=pki["cert"], key=pki["key"], ca=pki["ca"], verify=True))
    try:
        with pytest.raises((OSError, nats.errors.Error)):
            await try_connect(Settings(nats_url=users.services_url, nats_tls_ca=pki["ca"]))
        await try_connect(Settings(nats_url=users.services_url, nats_tls_ca=pki["ca"],
                                   nats_tls_cert=pki["client_cert"],
                                   nats_tls_key=pki["client_key"]))
    finally:
        users.stop()


# --- the embedded stack's NATS ----------------------------------------------------------------


async def test_embedded_stack_nats_is_authenticated(tmp_path: Path) -> None:
    """As ``radtrain up`` starts it: NKeys in ``<data_dir>/nats``, reused on restart;
    CLI commands in that folder find the seeds; ``keys nats-user`` works at once."""
    settings = Settings(data_dir=tmp_path, nats_port=0, nats_sync_always=False)
    old, old_url = start_nats(tmp_path / "nats", sync_always=False)  # an older radtrain's
    nc = await nats.connect(old_url)
    await nc.jetstream().add_stream(StreamConfig(name="KEPT", subjects=["kept.>"]))
    await nc.close()
    old.stop()
    proc, url, seed = start_local_nats(settings)
    try:
        assert seed == (tmp_path / "nats" / "services.nk").resolve()
        assert seed.stat().st_mode & 0o077 == 0
        await refused_connection(url)
        local = Settings(data_dir=tmp_path, nats_url=url)  # no credential: the folder's seeds
        nc = await nats.connect(**connect_options(local), allow_reconnect=False)
        assert (await nc.jetstream().stream_info("KEPT")).config.name == "KEPT"  # adopted
        await apply(nc.jetstream(), local)
        await nc.close()
        errors = Errors()
        oc = await nats.connect(**connect_options(local, identity="oncall"),
                                error_cb=errors.on_error, allow_reconnect=False)
        await refused_request(oc.jetstream(timeout=REFUSED), lambda j: j.key_value("apikeys"))
        await oc.close()

        result = CliRunner().invoke(cli_app, ["keys", "nats-user", "--tenant", "acme",
                                              "--name", "acme-up"],
                                    env={"RADTRAIN_DATA_DIR": str(tmp_path),
                                         "RADTRAIN_NATS_URL": url, "COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "reloaded" in result.output and "inbound.acme.task.requested" in result.output
        up = await nats.connect(url, nkeys_seed=str(tmp_path / "nats/upstream/acme-up.nk"),
                                inbox_prefix="_INBOX_acme-up", allow_reconnect=False)
        await up.jetstream(timeout=5).publish("inbound.acme.task.requested", b'{"probe": 3}')
        await up.close()

        proc.stop()
        proc, url, _ = start_local_nats(settings)  # a restart: same identities, same users
        await refused_connection(url)
        nc = await nats.connect(**connect_options(Settings(data_dir=tmp_path, nats_url=url)),
                                allow_reconnect=False)
        await nc.close()
        up = await nats.connect(url, nkeys_seed=str(tmp_path / "nats/upstream/acme-up.nk"),
                                inbox_prefix="_INBOX_acme-up", allow_reconnect=False)
        await up.close()
    finally:
        proc.stop()


async def test_a_rejected_auth_file_is_reported_and_the_old_users_stay(tmp_path: Path) -> None:
    users = start_authenticated_nats(tmp_path / "nats", port=0, sync_always=False)
    try:
        auth_file = users.dir / "auth.conf"
        auth_file.write_text(auth_file.read_text() + "\nbroken {{{\n")
        with pytest.raises(ServerStartError, match="refused the new config"):
            reload_nats(users.dir)
        await try_connect(Settings(nats_url=users.services_url))
        await refused_connection(users.url)
    finally:
        users.stop()
