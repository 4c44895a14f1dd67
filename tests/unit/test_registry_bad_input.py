"""Bad input is a clear error naming the value and the fix (exit 2 from the CLI), and
nothing is half-written: user ids, interaction logs, requests reaching the feedback log
through the Python API, database URLs and homes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from adaptkit.cli.main import main
from adaptkit.errors import InvalidUserIdError, LogFormatError
from adaptkit.feedback import FeedbackError, FeedbackLog
from adaptkit.interactions import MAX_LINE_BYTES, read_log
from adaptkit.registry import DatabaseUrlError, Registry
from adaptkit.user_ids import validate_user_id
from registry_support import publish_bytes


@pytest.mark.parametrize(
    "bad", ["alice\n", "al\x00ice", "al\tice", "CON", "con.txt", "Lpt1", "nul", "alice.", ""]
)
def test_control_characters_and_reserved_names_are_refused(bad: str) -> None:
    with pytest.raises(InvalidUserIdError, match="is not a valid user id"):
        validate_user_id(bad)


def test_ids_differing_only_by_case_are_refused(db_url: str, tmp_path: Path) -> None:
    registry = Registry(db_url, tmp_path / "adapters")
    publish_bytes(registry, "alice", b"one")
    with pytest.raises(InvalidUserIdError, match="'Alice' differs from the existing user 'alice'"):
        publish_bytes(registry, "Alice", b"two")
    with pytest.raises(InvalidUserIdError, match="only by case"):
        FeedbackLog(registry).record_completion("ALICE", "Hi", "Hello")
    assert [u.id for u in registry.users()] == ["alice"]
    assert [p.name for p in registry.blobs.root.iterdir() if p.name != ".staging"] == ["alice"]


def _log(tmp_path: Path, data: bytes) -> Path:
    good = json.dumps({"user": "alice", "prompt": "Hi", "response": "Hello"}).encode()
    path = tmp_path / "log.jsonl"
    path.write_bytes(good + b"\n" + data + b"\n")
    return path


@pytest.mark.parametrize(
    "data, problem",
    [
        (b'{"user": "alice", "prompt": "caf\xe9", "response": "x"}', "not UTF-8 (byte 0xe9"),
        (
            b'{"user": "alice", "prompt": "x", "response": "'
            + b"y" * (MAX_LINE_BYTES + 10)
            + b'"}',
            "longer than 1,048,576 bytes",
        ),
        (b'{"user": "alice", "feedback": {"rating": ' + b"9" * 5000 + b"}}", "unreadable JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"user": "alice", "prompt": "\\ud800", "response": "x"}', "lone surrogate"),
        (
            b'{"user": "alice", "messages": [{"role": "user"}], "response": "x"}',
            "messages[0].content': expected a string, got NoneType",
        ),
        (
            b'{"user": "alice", "messages": [{"role": "robot", "content": "x"}], "response": "x"}',
            "messages[0].role': 'robot' is not one of",
        ),
    ],
)
def test_malformed_logs_name_the_line_and_the_problem(
    data: bytes, problem: str, tmp_path: Path
) -> None:
    path = _log(tmp_path, data)
    with pytest.raises(LogFormatError) as caught:
        read_log(path)
    assert f"{path}:2:" in str(caught.value) and problem in str(caught.value)


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([{"role": "user"}], "messages[0].content expected a string, got NoneType"),
        ([{"role": "user", "content": "  "}], "messages[0].content must not be empty"),
        ([{"role": "robot", "content": "hi"}], "messages[0].role 'robot' is not one of"),
        ([{"role": "user", "content": "\ud800"}], "lone surrogate"),
        ([{"role": "assistant", "content": "hi"}], "messages must end with the user's turn"),
        ([], "expected a non-empty list"),
    ],
)
def test_requests_the_feedback_log_cannot_learn_from_are_refused_whole(
    messages: list, problem: str, db_url: str, tmp_path: Path
) -> None:
    log = FeedbackLog(Registry(db_url, tmp_path / "adapters"))
    log.record_completion("alice", "Hi", "Hello")
    with pytest.raises(FeedbackError, match="nothing was recorded") as caught:
        log.record_completion("alice", messages, "An answer.")
    assert problem in str(caught.value)
    # Nothing was stored: the user's pending requests are what they were.
    assert len(log.pending("alice").requests) == 0 and len(log.events("alice")) == 0


@pytest.mark.parametrize(
    "url, problem",
    [
        ("not a url", "is not a database URL"),
        ("mysql://root@127.0.0.1/x", "supports sqlite:/// and postgresql+psycopg://"),
        ("postgresql+psycopg://postgres@127.0.0.1:1/test", "cannot open the database"),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/no_such_db_here", "does not exist"),
        ("sqlite:////no/such/directory/registry.db", "cannot open the database"),
    ],
)
def test_a_wrong_or_unreachable_db_url_exits_2_naming_it(
    url: str, problem: str, tmp_path: Path
) -> None:
    with pytest.raises(DatabaseUrlError, match=re.escape(problem)):
        Registry(url, tmp_path / "adapters")
    result = CliRunner().invoke(main, ["users", "--home", str(tmp_path / "h"), "--db", url])
    assert result.exit_code == 2, result.output
    assert "--db / ADAPTKIT_DB" in result.output and problem in result.output


def test_a_home_that_is_a_file_exits_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a directory")
    result = CliRunner().invoke(main, ["users", "--home", str(home)])
    assert result.exit_code == 2 and f"'--home': Directory '{home}' is a file" in result.output
    blobs = tmp_path / "blobs"
    blobs.write_text("")
    result = CliRunner().invoke(
        main, ["users", "--home", str(tmp_path / "h"), "--blobs", str(blobs)]
    )
    assert result.exit_code == 2 and f"blob store {blobs}: cannot create it" in result.output
