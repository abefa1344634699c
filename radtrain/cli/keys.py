"""``radtrain keys``: API keys per tenant and the tenants' inbound event secrets.

Talks to NATS KV directly (like ``infra apply``): managing keys must not need
a key. A new key or secret is printed once; only a key's hash is stored.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from infra.settings import Settings
from radtrain.cli.client import Exit, JsonOpt, fail
from schemas.common import is_identifier

if TYPE_CHECKING:
    from nats.js import JetStreamContext

keys_app = typer.Typer(no_args_is_help=True,
                       help="API keys per tenant, and secrets for signed incoming events.")
console = Console()
T = TypeVar("T")

TenantOpt = Annotated[str | None, typer.Option(help="Tenant id (default: the default tenant).")]


def _run(work: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    """Connect, run, close; NATS is imported here so ``radtrain --help`` stays quick.
    NATS that cannot be reached, or a bucket that does not answer in time, is exit 4
    (unavailable: retry) with one line on stderr, as for every command."""
    from infra.errors import TransientError
    from radtrain.cli.nats_session import open_js

    async def main() -> T:
        async with open_js(Settings(), name="radtrain-keys") as js:
            try:
                return await work(js)
            except TransientError as exc:
                fail(f"NATS did not answer: {exc.message}", Exit.UNAVAILABLE)

    return asyncio.run(main())


def _seal() -> bytes | None:
    """The services' seal key for the secret buckets (the local stack's, or the setting)."""
    from infra.security.sealing import load_seal_key

    return load_seal_key(Settings())


def _tenant(tenant: str | None) -> str:
    value = tenant or Settings().default_tenant
    if not is_identifier(value):
        raise typer.BadParameter(f"{value!r} is not a valid tenant id")
    return value


@keys_app.command("create")
def create(tenant: TenantOpt = None,
           name: Annotated[str, typer.Option(help="What the key is for.")] = "") -> None:
    """Issue a key; it is printed once and cannot be shown again."""
    from gateway.tenancy import ApiKeyRepo

    async def work(js: JetStreamContext) -> None:
        issued = await (await ApiKeyRepo.open(js, seal_key=_seal())).create(_tenant(tenant), name)
        console.print(f"key id {issued.record.id} for tenant {issued.record.tenant}:")
        print(issued.key)

    _run(work)


@keys_app.command("list")
def list_keys(tenant: TenantOpt = None, as_json: JsonOpt = False) -> None:
    """Every key (id, tenant, name, created, revoked); never the key itself."""
    from gateway.tenancy import ApiKeyRepo

    async def work(js: JetStreamContext) -> None:
        records = await (await ApiKeyRepo.open(js, seal_key=_seal())).list(tenant)
        if as_json:
            typer.echo(json.dumps([{"id": r.id, "tenant": r.tenant, "name": r.name,
                                    "created_at": r.created_at.isoformat(),
                                    "revoked_at": r.revoked_at.isoformat() if r.revoked_at
                                    else None} for r in records], indent=1))
            return
        table = Table("id", "tenant", "name", "created", "revoked")
        for r in records:
            table.add_row(r.id, r.tenant, r.name, r.created_at.isoformat(timespec="seconds"),
                          r.revoked_at.isoformat(timespec="seconds") if r.revoked_at else "")
        console.print(table)

    _run(work)


@keys_app.command("revoke")
def revoke(key_id: str) -> None:
    """Revoke by key id; gateways stop accepting it within ``api_key_cache_s``."""
    from gateway.tenancy import ApiKeyRepo

    async def work(js: JetStreamContext) -> None:
        record = await (await ApiKeyRepo.open(js, seal_key=_seal())).revoke(key_id)
        if record is None:
            fail(f"no key {key_id!r}", Exit.NOT_FOUND)
        console.print(f"revoked {record.id} (tenant {record.tenant})")

    _run(work)


@keys_app.command("event-secret")
def event_secret(
    tenant: TenantOpt = None,
    overlap_s: Annotated[float, typer.Option(
        help="How long the previous secrets stay valid (rotation).")] = 86_400.0,
) -> None:
    """New secret for signed ``POST /v1/events`` (Standard Webhooks); printed once."""
    from gateway.tenancy import TenantRepo

    async def work(js: JetStreamContext) -> None:
        repo = await TenantRepo.open(js, seal_key=_seal())
        secret = await repo.rotate_inbound(_tenant(tenant), overlap_s)
        console.print(f"inbound event secret for tenant {_tenant(tenant)}:")
        print(secret)

    _run(work)


# --- NATS users of upstream systems (radtrain/servers/nats_auth.py) -----------------------

_EXAMPLE = '''\
import asyncio, json, uuid, nats

async def main() -> None:
    nc = await nats.connect("{url}",
                            nkeys_seed="{seed}",
                            inbox_prefix="{prefix}")  # JetStream acks come back here
    task_id = uuid.uuid4().hex
    event = {{"specversion": "1.0", "type": "radtrain.task.requested.v1",
             "source": "urn:example:upstream", "id": uuid.uuid4().hex,
             "subject": task_id, "datacontenttype": "application/json",
             "data": {{"task_id": task_id, "name": "from upstream", "flow": "general",
                      "task_type": "classification", "dataset_id": "my-dataset"}}}}
    ack = await nc.jetstream().publish("{subject}", json.dumps(event).encode(),
                                       headers={{"Content-Type": "application/cloudevents+json"}})
    print("accepted", task_id, "stream seq", ack.seq)
    await nc.close()

asyncio.run(main())'''


@keys_app.command("nats-user")
def nats_user(
    tenant: Annotated[str, typer.Option(help="The tenant this upstream system publishes for.")],
    name: Annotated[str | None, typer.Option(
        help="User name (default: <tenant>-<random>); also its inbox prefix _INBOX_<name>.")
                    ] = None,
) -> None:
    """Issue a NATS user for an upstream system: it may publish only on
    ``inbound.<tenant>.task.requested`` and read nothing else."""
    from infra.bus.connection import mask_url
    from radtrain.servers.nats_auth import NatsAuthDir, render_user

    settings = Settings()
    auth = NatsAuthDir(settings.data_dir / "nats")
    local = auth.auth_file.exists()  # written by `radtrain up`: a local server uses this folder
    try:
        issued = auth.issue_upstream(_tenant(tenant), name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"NATS user [bold]{issued.user}[/] for tenant {issued.tenant}\n"
                  f"  seed file     {issued.seed_file}  (secret: for that system only)\n"
                  f"  subject       {issued.subject}\n"
                  f"  inbox prefix  {issued.inbox_prefix}\n"
                  f"  public key    {issued.public_key}")
    if local:
        applied = auth.apply()
        console.print("  the local NATS server reloaded its users" if applied else
                      "  the local NATS server is not running: it reads the user when it starts")
    else:
        user = next(u for u in auth.users() if u.name == issued.user)
        console.print("No local NATS server config here. Add this user to your server's "
                      "upstream account, the one that imports the service "
                      "inbound.*.task.requested from radtrain's account (README: Connecting "
                      "an upstream system), and reload it (nats-server --signal reload):")
        print(render_user(user))
    console.print("Example (Python, nats-py):")
    print(_EXAMPLE.format(url=mask_url(settings.nats_url), seed=issued.seed_file,
                          prefix=issued.inbox_prefix, subject=issued.subject))


@keys_app.command("nats-users")
def nats_users() -> None:
    """The NATS identities of this folder's local server (names, roles, tenants; no secrets)."""
    from radtrain.servers.nats_auth import NatsAuthDir

    auth = NatsAuthDir(Settings().data_dir / "nats")
    table = Table("user", "role", "tenant", "public key", "created")
    for u in auth.users():
        table.add_row(u.name, u.role, u.tenant or "", u.nkey or "(password)", u.created_at)
    console.print(table)
