"""Settings -> ``nats.connect`` keyword arguments (infra/bus/connection.py); no server."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from infra.bus.connection import (
    NatsConfigError,
    connect_options,
    inbox_prefix_for,
    local_seed_path,
    mask_url,
)
from infra.settings import Settings

URL = "nats://127.0.0.1:4222"


def settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(nats_url=kw.pop("nats_url", URL), data_dir=tmp_path / "data", **kw)


def file(path: Path, text: str = "x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_nothing_set_and_no_local_seed_means_no_credentials(tmp_path: Path) -> None:
    assert connect_options(settings(tmp_path)) == {"servers": [URL]}


def test_user_and_password(tmp_path: Path) -> None:
    opts = connect_options(settings(tmp_path, nats_user="svc", nats_password="pw"))
    assert (opts["user"], opts["password"]) == ("svc", "pw")
    with pytest.raises(NatsConfigError, match="together"):
        connect_options(settings(tmp_path, nats_user="svc"))


def test_nkey_seed_and_creds_files(tmp_path: Path) -> None:
    seed, creds = file(tmp_path / "u.nk"), file(tmp_path / "u.creds")
    assert connect_options(settings(tmp_path, nats_nkey_seed=seed))["nkeys_seed"] == str(seed)
    assert connect_options(settings(tmp_path, nats_creds=creds))["user_credentials"] == str(creds)
    with pytest.raises(NatsConfigError, match="only one"):
        connect_options(settings(tmp_path, nats_creds=creds, nats_nkey_seed=seed))


@pytest.mark.parametrize("setting", ["nats_nkey_seed", "nats_creds", "nats_tls_ca"])
def test_a_missing_file_names_its_setting(tmp_path: Path, setting: str) -> None:
    with pytest.raises(NatsConfigError, match=rf"{setting} \(RADTRAIN_{setting.upper()}\)"):
        connect_options(settings(tmp_path, **{setting: tmp_path / "missing"}))


def test_a_folder_is_not_a_seed_file(tmp_path: Path) -> None:
    with pytest.raises(NatsConfigError, match=r"nats_nkey_seed.*not a file"):
        connect_options(settings(tmp_path, nats_nkey_seed=tmp_path))


def test_local_seed_file_per_identity_when_nothing_else_is_set(tmp_path: Path) -> None:
    s = settings(tmp_path)
    services = file(local_seed_path(s, "services"))
    oncall = file(local_seed_path(s, "oncall"))
    assert services == tmp_path / "data" / "nats" / "services.nk"
    opts = connect_options(s)
    assert opts["nkeys_seed"] == str(services) and "inbox_prefix" not in opts
    opts = connect_options(s, identity="oncall")
    assert opts["nkeys_seed"] == str(oncall) and opts["inbox_prefix"] == "_INBOX_oncall"
    assert connect_options(s.model_copy(update={"nats_identity": "oncall"}))["nkeys_seed"] == \
        str(oncall)


def test_url_credentials_win_over_the_local_seed(tmp_path: Path) -> None:
    s = settings(tmp_path, nats_url="nats://svc:pw@127.0.0.1:4222")
    file(local_seed_path(s, "services"))
    assert connect_options(s) == {"servers": ["nats://svc:pw@127.0.0.1:4222"]}


def test_explicit_seed_wins_over_the_local_seed(tmp_path: Path) -> None:
    seed = file(tmp_path / "mine.nk")
    s = settings(tmp_path, nats_nkey_seed=seed)
    file(local_seed_path(s, "services"))
    assert connect_options(s)["nkeys_seed"] == str(seed)


def test_several_servers(tmp_path: Path) -> None:
    s = settings(tmp_path, nats_url="nats://a:4222, nats://b:4222")
    assert connect_options(s)["servers"] == ["nats://a:4222", "nats://b:4222"]


def test_tls_ca_and_client_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    client = ca.issue_cert("client")
    ca_file, cert, key = tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "c.key"
    ca.cert_pem.write_to_path(str(ca_file))
    client.cert_chain_pems[0].write_to_path(str(cert))
    client.private_key_pem.write_to_path(str(key))
    ctx = connect_options(settings(tmp_path, nats_tls_ca=ca_file))["tls"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.get_ca_certs()  # our CA is loaded
    opts = connect_options(settings(tmp_path, nats_tls_ca=ca_file, nats_tls_cert=cert,
                                    nats_tls_key=key))
    assert isinstance(opts["tls"], ssl.SSLContext)
    with pytest.raises(NatsConfigError, match="nats_tls_cert"):
        connect_options(settings(tmp_path, nats_tls_key=key))
    with pytest.raises(NatsConfigError, match="nats_tls_cert"):
        connect_options(settings(tmp_path, nats_tls_cert=file(tmp_path / "bad.pem")))


def test_inbox_prefixes() -> None:
    assert inbox_prefix_for("services") == "_INBOX"
    assert inbox_prefix_for("oncall") == "_INBOX_oncall"


@pytest.mark.parametrize(("url", "masked"), [
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ("nats://svc:s3cret@127.0.0.1:4222", "nats://svc:***@127.0.0.1:4222"),
    ("tls://t0ken@host", "tls://***@host"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
