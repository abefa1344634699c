"""deploy/nats: the server settings of the Helm values, with the accounts that
deploy/nats/identities.py renders, form a config nats-server accepts (``-t``)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest
import yaml

from radtrain.servers.nats import nats_server_binary

pytestmark = pytest.mark.integration
NATS = Path(__file__).resolve().parents[2] / "deploy" / "nats"


def test_values_and_accounts_make_a_valid_server_config(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("identities", NATS / "identities.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    values = yaml.safe_load((NATS / "values.yaml").read_text(encoding="utf-8"))["config"]
    out = module.write_identities(tmp_path)
    auth = yaml.safe_load(out.read_text())["configMap"]["merge"]["data"]["auth.conf"]
    (tmp_path / "auth.conf").write_text(auth)
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f"server_name: n0\nport: {values['nats']['port']}\n"
        f"http_port: {values['monitor']['port']}\n"
        f"max_payload: {values['merge']['max_payload']}\n"
        f"jetstream {{\n  store_dir: {tmp_path / 'js'}\n"
        f"  sync_interval: {values['jetstream']['merge']['sync_interval']}\n}}\n"
        f"include {values['merge']['00$include']}\n")
    done = subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
