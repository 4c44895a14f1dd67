"""``adaptkit keys`` and model names: keys are stored hashed and reach what they were made
for; ``<base>:<user>@<N>`` parses or says what to send."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from adaptkit.cli.main import main
from adaptkit.errors import InputError, InvalidUserIdError
from adaptkit.kit import AdaptKit
from adaptkit.serve import ApiKeys, ModelRef, parse_model
from adaptkit.serve.naming import UnknownModelError


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(
        main, ["keys", "create", "--scope", "app", "--users", "team-*", "--home", str(tmp_path)]
    )
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[0]
    assert key.startswith("ak-") and len(key) > 40
    stored = sqlite3.connect(tmp_path / "registry.db").execute("SELECT * FROM api_keys").fetchall()
    assert len(stored) == 1 and key not in repr(stored)  # only its sha256 is kept

    keys = ApiKeys(AdaptKit(tmp_path).registry)
    found = keys.check(key)
    assert found.scope == "app" and found.reaches("team-bo") and not found.reaches("alice")
    assert keys.check(key + "x") is None
    listed = runner.invoke(main, ["keys", "list", "--home", str(tmp_path)])
    assert key[:10] in listed.output and key not in listed.output and "active" in listed.output
    revoked = runner.invoke(main, ["keys", "revoke", str(found.id), "--home", str(tmp_path)])
    assert revoked.exit_code == 0 and keys.check(key) is None
    bad = runner.invoke(main, ["keys", "create", "--scope", "root", "--home", str(tmp_path)])
    assert bad.exit_code == 2 and "--scope" in bad.output


def test_serve_flags_are_checked_before_the_model_loads(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["serve", "--host", "0.0.0.0", "--no-auth", "--max-queue", "0", "--home", str(tmp_path)],
    )
    assert result.exit_code == 2
    assert "--max-queue must be >= 1" in result.output and "loopback only" in result.output
    small = CliRunner().invoke(main, ["serve", "--cache-mb", "0", "--home", str(tmp_path)])
    assert small.exit_code == 2 and "'--cache-mb': 0 is not in the range x>=1" in small.output


def test_model_names() -> None:
    base = "smollm2-135m-instruct"
    assert parse_model(base, base) == ModelRef(base)
    assert parse_model(f"{base}:alice", base) == ModelRef(base, "alice")
    assert parse_model(f"{base}:alice@12", base) == ModelRef(base, "alice", 12)
    with pytest.raises(UnknownModelError, match="this server serves 'smollm2-135m-instruct'"):
        parse_model("gpt-4o:alice", base)
    with pytest.raises(InputError, match="positive number"):
        parse_model(f"{base}:alice@0", base)
    with pytest.raises(InvalidUserIdError, match="not a valid user id"):
        parse_model(f"{base}:../etc", base)
