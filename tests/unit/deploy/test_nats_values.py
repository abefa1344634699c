"""deploy/nats/values.yaml (the official NATS Helm chart's values) says what
deploy/nats/cluster.conf says, the runners' KEDA triggers reach it, and the
accounts it includes are radtrain/servers/nats_auth.py's (deploy/nats/identities.py)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import yaml

from radtrain.servers.nats_auth import MAIN_ACCOUNT, NatsAuthDir, public_key_of
from tests.unit.deploy.test_manifests import by_kind, rendered, settings_data

ROOT = Path(__file__).resolve().parents[3]
NATS = ROOT / "deploy" / "nats"
VALUES = yaml.safe_load((NATS / "values.yaml").read_text(encoding="utf-8"))
CLUSTER_CONF = (NATS / "cluster.conf").read_text(encoding="utf-8")
UNITS = {"": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def conf_value(name: str) -> str:
    """``name: value`` of the plain nats-server config (comments dropped)."""
    match = re.search(rf"^\s*{name}:\s*([^#\n]+)", CLUSTER_CONF, re.MULTILINE)
    assert match, name
    return match.group(1).strip()


def size(value: str | int) -> int:
    if isinstance(value, int):
        return value
    number, unit = re.fullmatch(r"(\d+)\s*([KMG]B)?", value).groups()  # type: ignore[union-attr]
    return int(number) * UNITS[unit or ""]


def identities() -> ModuleType:
    spec = importlib.util.spec_from_file_location("identities", NATS / "identities.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_values_match_cluster_conf() -> None:
    config = VALUES["config"]
    assert config["cluster"]["enabled"] is True and config["cluster"]["replicas"] == 3
    assert config["cluster"]["merge"]["name"] == re.search(
        r"cluster\s*\{\s*name:\s*(\w+)", CLUSTER_CONF).group(1)  # type: ignore[union-attr]
    js = config["jetstream"]
    assert js["enabled"] and js["fileStore"]["enabled"] and js["fileStore"]["pvc"]["enabled"]
    assert js["memoryStore"]["enabled"] is False
    assert js["merge"]["sync_interval"] == conf_value("sync_interval") == "always"
    assert size(config["merge"]["max_payload"]) == size(conf_value("max_payload"))
    assert config["monitor"]["port"] == int(conf_value("http").rsplit(":", 1)[1])
    assert config["nats"]["port"] == int(conf_value("listen").rsplit(":", 1)[1])
    assert config["merge"]["00$include"] == "auth.conf"
    tag = VALUES["container"]["image"]["tag"]
    assert re.match(r"\d+\.\d+\.\d+", tag), "pin the nats-server version"


def test_radtrain_and_keda_reach_the_release() -> None:
    """Service names follow ``fullnameOverride`` in namespace ``nats`` (README)."""
    name, port = VALUES["fullnameOverride"], VALUES["config"]["monitor"]["port"]
    for tree in ("base", "overlays/prod", "overlays/dev"):
        objects = rendered(tree)
        url = urlsplit(settings_data(objects)["RADTRAIN_NATS_URL"])
        assert (url.hostname, url.port) == (f"{name}.nats.svc.cluster.local",
                                            VALUES["config"]["nats"]["port"])
        for job in by_kind(objects, "ScaledJob"):
            meta = job["spec"]["triggers"][0]["metadata"]
            assert meta["natsServerMonitoringEndpoint"] == (
                f"{name}-headless.nats.svc.cluster.local:{port}")
            assert meta["account"] == MAIN_ACCOUNT


def test_identities_render_the_accounts_as_helm_values(tmp_path: Path) -> None:
    module = identities()
    out = module.write_identities(tmp_path)
    again = module.write_identities(tmp_path)  # idempotent: the same keys
    assert out == again
    values = yaml.safe_load(out.read_text(encoding="utf-8"))
    auth_conf = values["configMap"]["merge"]["data"]["auth.conf"]
    auth = NatsAuthDir(tmp_path / "nats")
    assert auth_conf == auth.auth_file.read_text(encoding="utf-8")
    services = public_key_of((tmp_path / "nats" / "services.nk").read_bytes())
    assert services in auth_conf and f"{MAIN_ACCOUNT}: {{" in auth_conf
    assert "jetstream: enabled" in auth_conf
    for seed in (tmp_path / "nats").glob("*.nk"):  # public keys only, never a seed
        assert seed.read_text().strip() not in auth_conf
    for secret in ("services.nk", "secrets-seal.key"):
        assert (tmp_path / "nats" / secret).stat().st_mode & 0o077 == 0
    seal = (tmp_path / "nats" / "secrets-seal.key").read_text()
    assert len(bytes.fromhex(seal.strip())) == 32 and seal.strip() not in auth_conf
