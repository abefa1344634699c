"""NATS identities and permissions (radtrain/servers/nats_auth.py), without a server.

The integration tests (tests/integration/test_nats_auth.py) show the server
enforcing them; here: which subjects the rules match, and the local folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import nkeys
import pytest

from radtrain.servers.nats_auth import (
    NatsAuthDir,
    NatsUser,
    permissions_for,
    public_key_of,
    render_accounts,
    render_user,
    upstream_subject,
)


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def allowed(allow: tuple[str, ...], deny: tuple[str, ...], subject: str) -> bool:
    return any(matches(a, subject) for a in allow) and not any(matches(d, subject) for d in deny)


def api_subjects(stream: str, bucket: str) -> list[str]:
    """Every JetStream API and KV subject that reads, watches or changes a bucket."""
    return [
        f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.UPDATE.{stream}",
        f"$JS.API.STREAM.DELETE.{stream}", f"$JS.API.STREAM.PURGE.{stream}",
        f"$JS.API.STREAM.SNAPSHOT.{stream}", f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.STREAM.MSG.DELETE.{stream}", f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.$KV.{bucket}.k1",
        f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.c1",
        f"$JS.API.CONSUMER.CREATE.{stream}.c1.$KV.{bucket}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.d1", f"$JS.API.CONSUMER.INFO.{stream}.c1",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.c1", f"$JS.API.CONSUMER.LIST.{stream}",
        f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", f"$JS.ACK.{stream}.c1.1.1.1.1.0",
        f"$KV.{bucket}.k1", f"$KV.{bucket}.a.b",
    ]


ONCALL = permissions_for(NatsUser(name="oncall", role="oncall", nkey="U"))


@pytest.mark.parametrize("bucket", ["apikeys", "tenants", "webhooks"])
def test_oncall_reaches_no_secret_bucket(bucket: str) -> None:
    assert ONCALL is not None
    for subject in api_subjects(f"KV_{bucket}", bucket):
        assert not allowed(ONCALL.publish_allow, ONCALL.publish_deny, subject), subject
    assert not allowed(ONCALL.subscribe_allow, ONCALL.subscribe_deny, f"$KV.{bucket}.k1")


@pytest.mark.parametrize("bucket", ["tasks", "datasets", "runs", "apikeys2"])
def test_oncall_reaches_the_other_buckets(bucket: str) -> None:
    assert ONCALL is not None
    for subject in api_subjects(f"KV_{bucket}", bucket):
        if ".STREAM.UPDATE." in subject:
            continue  # no stream changes for on-call at all
        assert allowed(ONCALL.publish_allow, ONCALL.publish_deny, subject), subject
    assert allowed(ONCALL.subscribe_allow, ONCALL.subscribe_deny, f"$KV.{bucket}.k1")


def test_oncall_may_not_create_streams_nor_read_the_services_replies() -> None:
    assert ONCALL is not None
    for subject in ("$JS.API.STREAM.CREATE.COPY", "$JS.API.STREAM.UPDATE.TASKS",
                    "$JS.API.STREAM.RESTORE.COPY", "_INBOX.abc.def"):
        assert not allowed(ONCALL.publish_allow, ONCALL.publish_deny, subject), subject
    assert not allowed(ONCALL.subscribe_allow, ONCALL.subscribe_deny, "_INBOX.abc.def")
    for subject in ("_INBOX_oncall.abc.def", "tasks.requested.t1", "dlq.x"):
        assert allowed(ONCALL.subscribe_allow, ONCALL.subscribe_deny, subject), subject
    assert allowed(ONCALL.publish_allow, ONCALL.publish_deny, "tasks.redriven.t1")


def test_upstream_user_is_bound_to_its_tenant_and_inbox() -> None:
    perms = permissions_for(NatsUser(name="acme-1", role="upstream", tenant="acme", nkey="U"))
    assert perms is not None
    assert perms.publish_allow == ("inbound.acme.task.requested",)
    assert perms.subscribe_allow == ("_INBOX_acme-1.>",)
    assert upstream_subject("acme") == "inbound.acme.task.requested"


def test_services_are_unrestricted() -> None:
    assert permissions_for(NatsUser(name="services", role="services", nkey="U")) is None


@pytest.mark.parametrize("kwargs", [
    {"name": "a.b", "role": "services", "nkey": "U"},  # not a subject token
    {"name": "x", "role": "services"},  # no credential
    {"name": "x", "role": "services", "nkey": "U", "password": "p"},  # two credentials
    {"name": "x", "role": "upstream", "nkey": "U"},  # no tenant
    {"name": "x", "role": "upstream", "nkey": "U", "tenant": "a.>"},
    {"name": "oncall", "role": "upstream", "nkey": "U", "tenant": "acme"},
])
def test_invalid_users(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        NatsUser(**kwargs)  # type: ignore[arg-type]


def test_local_identities_are_created_once_with_private_seed_files(tmp_path: Path) -> None:
    auth = NatsAuthDir(tmp_path / "nats")
    auth.ensure_local_identities()
    seeds = {role: auth.seed_path(role, role) for role in ("services", "oncall")}
    first = {role: p.read_bytes() for role, p in seeds.items()}
    for path in seeds.values():
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_bytes().startswith(b"SU")
    assert auth.registry_path.stat().st_mode & 0o777 == 0o600
    auth.ensure_local_identities()
    assert {role: p.read_bytes() for role, p in seeds.items()} == first
    users = {u.name: u for u in auth.users()}
    assert users["services"].nkey == public_key_of(first["services"])
    assert users["oncall"].role == "oncall"


def test_issue_upstream_and_render(tmp_path: Path) -> None:
    auth = NatsAuthDir(tmp_path / "nats")
    auth.ensure_local_identities()
    issued = auth.issue_upstream("acme", "acme-pacs")
    assert issued.seed_file == auth.dir / "upstream" / "acme-pacs.nk"
    assert issued.seed_file.stat().st_mode & 0o777 == 0o600
    seed = issued.seed_file.read_bytes().strip()
    assert nkeys.from_seed(bytearray(seed)).public_key.decode() == issued.public_key
    assert (issued.subject, issued.inbox_prefix) == ("inbound.acme.task.requested",
                                                     "_INBOX_acme-pacs")
    with pytest.raises(ValueError, match="exists"):
        auth.issue_upstream("acme", "acme-pacs")
    generated = auth.issue_upstream("beta")
    assert generated.user.startswith("beta-")

    text = auth.render().read_text()
    assert auth.auth_file.stat().st_mode & 0o777 == 0o600
    assert text.index("services services") < text.index("oncall oncall") < text.index("acme")
    assert issued.public_key in text and '"inbound.acme.task.requested"' in text
    assert seed.decode() not in text  # public keys only, never a seed
    registry = json.loads(auth.registry_path.read_text())
    assert {u["name"] for u in registry["users"]} == {"services", "oncall", "acme-pacs",
                                                      generated.user}
    entry = render_user(auth.users()[2])
    assert entry.startswith("# upstream acme-pacs (tenant acme)\n{nkey: ")
    assert "\n".join("      " + line for line in entry.splitlines()) in text


def test_password_users_render_quoted() -> None:
    text = render_accounts([NatsUser(name="svc", role="services", password='p"w')])
    assert 'user: "svc", password: "p\\"w"' in text
    assert text.startswith("# Written by radtrain") and "accounts {" in text


def test_upstream_users_live_in_their_own_account_importing_the_inbound_service() -> None:
    text = render_accounts([NatsUser(name="services", role="services", nkey="US"),
                            NatsUser(name="acme-1", role="upstream", tenant="acme", nkey="UA")])
    main, upstream = text.split("UPSTREAM: {")
    assert '"US"' in main and '"UA"' not in main and "jetstream: enabled" in main
    assert 'exports: [{service: "inbound.*.task.requested"}]' in main
    assert '"UA"' in upstream and "jetstream" not in upstream
    assert 'imports: [{service: {account: RADTRAIN, subject: "inbound.*.task.requested"}}]' \
        in upstream
