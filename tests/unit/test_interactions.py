"""The interaction-log format: valid forms parse; malformed lines name file, line, field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptkit.errors import InvalidUserIdError, LogFormatError
from adaptkit.interactions import interactions_digest, read_log
from adaptkit.user_ids import validate_user_id
from conftest import EXAMPLES


def write_log(tmp_path: Path, *records: object) -> Path:
    path = tmp_path / "log.jsonl"
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = {"user": "alice", "prompt": "How far is the zoo?", "response": "4 km, by bike."}


def test_example_logs_parse_with_their_feedback() -> None:
    alice = read_log(EXAMPLES / "alice.jsonl")
    bob = read_log(EXAMPLES / "bob.jsonl")
    assert len(alice) >= 12 and len(bob) >= 12
    assert {i.user_id for i in alice} == {"alice"} and {i.user_id for i in bob} == {"bob"}
    edited = [i for i in alice if i.feedback.edited]
    assert edited and all(i.sft_target == i.feedback.edited for i in edited)
    pair = next(i for i in alice if i.feedback.chosen)
    assert pair.response is None and pair.sft_target == pair.feedback.chosen
    multi_turn = next(i for i in alice if len(i.messages) > 1)
    assert [m.role for m in multi_turn.messages] == ["user", "assistant", "user"]


def test_rejected_response_is_not_a_target_but_its_edit_is(tmp_path: Path) -> None:
    log = write_log(
        tmp_path,
        {**GOOD, "feedback": {"rating": -1}},
        {**GOOD, "feedback": {"rating": -1, "edited": "5 km by bicycle."}},
    )
    rejected, edited = read_log(log)
    assert rejected.sft_target is None
    assert edited.sft_target == "5 km by bicycle."
    assert edited.preference_pair == ("5 km by bicycle.", GOOD["response"])


def test_episode_history_records_are_log_lines(tmp_path: Path) -> None:
    log = write_log(
        tmp_path,
        {
            "task_id": 1,
            "split": "history",
            "intent": "User01: How long to the library?",
            "response": "By bicycle, 12 minutes.",
            "sites": ["map"],
        },
        {
            "task_id": 2,
            "user_id": "User02",
            "intent": "Which forum?",
            "observation": "Forums: a, b",
            "response": "b",
            "feedback": {"rating": 1},
        },
    )
    first, second = read_log(log)
    assert first.user_id == "User01"
    assert first.messages[0].content == "How long to the library?"  # prefix stripped
    assert second.user_id == "User02" and second.messages[0].content.startswith("Forums: a, b")


def test_digest_depends_on_content_not_on_file(tmp_path: Path) -> None:
    one = read_log(write_log(tmp_path, GOOD))
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    two = read_log(write_log(other_dir, GOOD))
    changed = read_log(write_log(other_dir, {**GOOD, "response": "3 km"}))
    assert interactions_digest(one) == interactions_digest(two)
    assert interactions_digest(one) != interactions_digest(changed)


@pytest.mark.parametrize(
    ("bad_line", "field", "phrase"),
    [
        ("{not json", None, "invalid JSON"),
        ("[1, 2]", None, "expected a JSON object"),
        ({"prompt": "x", "response": "y"}, "user", "missing"),
        ({**GOOD, "user": "../etc"}, "user", "not a valid user id"),
        ({**GOOD, "user": ""}, "user", "not a valid user id"),
        ({**GOOD, "user": 7}, "user", "must be a string"),
        ({"user": "alice", "response": "y"}, "prompt", "missing"),
        ({**GOOD, "prompt": 3}, "prompt", "expected a string"),
        ({"user": "alice", "prompt": "x"}, "response", "missing"),
        ({**GOOD, "feedback": {"rating": 5}}, "feedback.rating", "must be 1 or -1"),
        ({**GOOD, "feedback": {"rating": True}}, "feedback.rating", "must be 1 or -1"),
        ({**GOOD, "feedback": {"edited": "  "}}, "feedback.edited", "must not be empty"),
        ({**GOOD, "feedback": {"chosen": "a"}}, "feedback.rejected", "pair"),
        ({**GOOD, "feedback": {"chosen": "a", "rejected": "a"}}, "feedback.rejected", "same"),
        ({**GOOD, "feedback": "great"}, "feedback", "expected an object"),
        ({"user": "alice", "messages": [], "response": "y"}, "messages", "non-empty"),
        (
            {"user": "alice", "messages": [{"role": "bot", "content": "x"}], "response": "y"},
            "messages[0].role",
            "not one of",
        ),
        (
            {
                "user": "alice",
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "y"},
                ],
                "response": "y",
            },
            "messages",
            "last message",
        ),
        ({**GOOD, "split": "deployment"}, "split", "not interactions"),
    ],
)
def test_malformed_line_names_file_line_and_field(
    tmp_path: Path, bad_line: object, field: str | None, phrase: str
) -> None:
    log = write_log(tmp_path, GOOD, "", bad_line)
    with pytest.raises(LogFormatError) as caught:
        read_log(log)
    error = caught.value
    assert error.line == 3  # blank line 2 is skipped but still counted
    assert error.field == field
    assert phrase in str(error)
    assert f"{log}:3" in str(error)
    assert error.exit_code == 2


def test_missing_and_empty_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(LogFormatError, match="no such file"):
        read_log(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(LogFormatError, match="no interactions"):
        read_log(empty)


@pytest.mark.parametrize("user_id", ["", "a/b", "a\\b", "..", "a..b", ".hidden", "x" * 65, "é"])
def test_invalid_user_ids_are_refused(user_id: str) -> None:
    with pytest.raises(InvalidUserIdError, match="not a valid user id"):
        validate_user_id(user_id)


@pytest.mark.parametrize("user_id", ["alice", "User01", "a.b-c_d", "7"])
def test_valid_user_ids_pass(user_id: str) -> None:
    assert validate_user_id(user_id) == user_id
