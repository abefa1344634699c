"""NATS identities of a radtrain cluster on Kubernetes (README "Running on Kubernetes").

    python deploy/nats/identities.py DATA_DIR

creates, on first use, the ``services`` and ``oncall`` NKeys under
``DATA_DIR/nats/`` (0600 seed files, radtrain/servers/nats_auth.py) and the
services' seal key ``secrets-seal.key`` (0600, infra/security/sealing.py), and writes

- ``DATA_DIR/nats/auth.conf``: the server's ``accounts`` block (public keys only);
- ``DATA_DIR/auth-values.yaml``: the same block as Helm values for the NATS chart
  (deploy/nats/values.yaml includes it as ``auth.conf``),

then prints the kubectl command that puts the services seed and the seal key into
the Secret ``radtrain-nats``. Upstream users are issued with
``RADTRAIN_DATA_DIR=DATA_DIR radtrain keys nats-user --tenant T``; run this again
afterwards and ``helm upgrade`` (the chart's reloader applies the new users).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infra.security.sealing import ensure_local_key
from infra.settings import Settings
from radtrain.servers.nats_auth import NatsAuthDir

AUTH_VALUES = "auth-values.yaml"


def auth_values(auth_conf: str) -> str:
    """Helm values that put ``auth_conf`` into the chart's ConfigMap as ``auth.conf``."""
    body = "".join(f"        {line}\n" if line else "\n" for line in auth_conf.splitlines())
    return ("# Written by deploy/nats/identities.py: public NKeys only.\n"
            "configMap:\n  merge:\n    data:\n      auth.conf: |\n" + body)


def write_identities(data_dir: Path) -> Path:
    """Create the local identities if missing, render auth.conf and the values file."""
    auth = NatsAuthDir(data_dir / "nats")
    auth.ensure_local_identities()
    ensure_local_key(Settings(data_dir=data_dir))
    conf = auth.render().read_text(encoding="utf-8")
    out = data_dir / AUTH_VALUES
    out.write_text(auth_values(conf), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--namespace", default="radtrain")
    args = parser.parse_args(argv)
    out = write_identities(args.data_dir)
    nats_dir = (args.data_dir / "nats").resolve()
    files = " ".join(f"--from-file={name}={json.dumps(str(nats_dir / name))}"
                     for name in ("services.nk", "secrets-seal.key"))
    print(f"wrote {out}")
    print("Secret for gateway, handlers and runners:")
    print(f"  kubectl -n {args.namespace} create secret generic radtrain-nats {files}")
    print("The oncall seed stays with on-call people (radtrain status/dlq/replay "
          "with RADTRAIN_NATS_IDENTITY=oncall).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
