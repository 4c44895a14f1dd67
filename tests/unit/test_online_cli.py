"""`adaptkit feedback`, `adaptkit train --method` and `adaptkit versions` on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from adaptkit.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[2] / "users" / "examples"


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_feedback_records_then_learns_and_versions_say_why(home: Path, tiny_model_dir) -> None:
    first = run(
        "feedback",
        "alice",
        "--home",
        home,
        "--prompt",
        "How do I get to work?",
        "--response",
        "Drive.",
        "--edit",
        "Cycle along the river, 15 minutes.",
    )
    assert first.exit_code == 0, first.output
    assert "recorded alice event 1 (edit, request 1): pending" in first.output
    up = run("feedback", "alice", "--home", home, "--request", "1", "--up")
    assert up.exit_code == 0 and "event 2 (up, request 1)" in up.output
    learned = run(
        "feedback",
        "alice",
        "--home",
        home,
        "--note",
        "I always cycle",
        "--learn",
        "--steps",
        "2",
        "--base",
        tiny_model_dir,
    )
    assert learned.exit_code == 0, learned.output
    assert "alice v1 (active, sft): promoted: probe retention" in learned.output
    assert "event 3: skipped: a note trains only through the distill rule" in learned.output
    versions = run("versions", "alice", "--home", home)
    assert "(promoted: probe retention" in versions.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--request", "7", "--up"], "request 7 does not exist"),
        (["--request", "1", "--edit", " "], "'text' must be a non-empty string"),
        (["--request", "1", "--chosen", "A", "--rejected", "A"], "the same text"),
        (["--request", "1", "--up", "--down"], "one kind of feedback per call"),
        (["--prompt", "hi", "--up"], "--prompt and --response come together"),
        (["--request", "1", "--up", "--method", "dpo", "--steps", "0"], "--steps must be >= 1"),
    ],
)
def test_bad_feedback_exits_2_and_records_nothing(home: Path, args, message) -> None:
    assert (
        run(
            "feedback", "alice", "--home", home, "--prompt", "hi", "--response", "hello", "--accept"
        ).exit_code
        == 0
    )
    result = run("feedback", "alice", "--home", home, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    from adaptkit.feedback import FeedbackLog
    from adaptkit.home import Home
    from adaptkit.registry import Registry

    root = Home(home)
    assert len(FeedbackLog(Registry(root.registry_url, root.adapters_dir)).events("alice")) == 1


def test_feedback_for_an_unknown_user_is_an_error(home: Path) -> None:
    result = run("feedback", "carol", "--home", home, "--note", "I always cycle")
    assert result.exit_code == 2
    assert "unknown user 'carol'" in result.output


@pytest.mark.parametrize("method", ["dpo", "kto", "distill"])
def test_train_method(home: Path, tiny_model_dir, method: str) -> None:
    result = run(
        "train",
        "--user",
        "alice",
        "--log",
        EXAMPLES / "alice.jsonl",
        "--home",
        home,
        "--base",
        tiny_model_dir,
        "--method",
        method,
        "--steps",
        "3",
        "--rank",
        "2",
        "--max-length",
        "64",
    )
    assert result.exit_code == 0, result.output
    assert "published alice v1 (active)" in result.output
    assert f" {method} " in run("versions", "alice", "--home", home).output
