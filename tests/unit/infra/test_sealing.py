"""Where a process finds the seal key of the secret buckets."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.security.sealing import ensure_local_key, load_seal_key, local_key_path
from infra.settings import Settings


def test_explicit_setting_wins_and_a_bad_file_names_the_setting(tmp_path: Path) -> None:
    good = tmp_path / "k"
    good.write_text("ab" * 32)
    assert load_seal_key(Settings(secrets_seal_key=good)) == bytes.fromhex("ab" * 32)
    bad = tmp_path / "bad"
    bad.write_text("not hex")
    with pytest.raises(ValueError, match="RADTRAIN_SECRETS_SEAL_KEY"):
        load_seal_key(Settings(secrets_seal_key=bad))


def test_the_local_key_is_used_only_by_the_local_services_identity(tmp_path: Path) -> None:
    local = Settings(data_dir=tmp_path, nats_url="nats://127.0.0.1:4222")
    path = ensure_local_key(local)
    assert path == local_key_path(local) and path.stat().st_mode & 0o777 == 0o600
    assert ensure_local_key(local).read_text() == path.read_text()  # reused, not rotated
    assert load_seal_key(local) is None  # no services seed: not the local stack's services
    (tmp_path / "nats" / "services.nk").write_text("SU...")
    assert load_seal_key(local) == bytes.fromhex(path.read_text().strip())
    with_password = local.model_copy(update={"nats_url": "nats://u:p@127.0.0.1:4222"})
    assert load_seal_key(with_password) is None  # another identity: no silent fallback
