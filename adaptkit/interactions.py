"""Interaction logs: JSON Lines, one past interaction of a user per line.

A line (every field but ``user``/``prompt``/``response`` is optional)::

    {"user": "alice",
     "prompt": "How do I get to the museum?",          # or "messages": [{"role", "content"}, ...]
     "response": "Cycle along the river, about 15 minutes.",
     "feedback": {"rating": 1, "edited": "...", "chosen": "...", "rejected": "...",
                  "note": "I always cycle"}}

``history`` records of the arena episode format are accepted too: ``user_id``
(or a ``Name:`` prefix of ``intent``), ``intent`` (+ ``observation``) as the
prompt. Unknown fields are ignored. A malformed line raises ``LogFormatError``
naming file, line and field; the whole file is validated before anything uses it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from adaptkit.errors import InvalidUserIdError, LogFormatError
from adaptkit.user_ids import validate_user_id

INTENT_USER_PREFIX = re.compile(r"^([A-Za-z0-9_-]+):\s")
ROLES = ("system", "user", "assistant")
# A line (or one message) longer than this is refused before it is decoded: a log line
# of tens of MB would otherwise be held whole in memory, several times over.
MAX_LINE_BYTES = 1 << 20
MAX_TEXT_CHARS = 200_000


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Feedback:
    """What the user said about a response. All optional; no feedback = accepted."""

    rating: int | None = None  # +1 accepted / thumbs up, -1 rejected / thumbs down
    edited: str | None = None  # the user's corrected answer
    chosen: str | None = None  # preferred of two answers ...
    rejected: str | None = None  # ... and the other one
    note: str | None = None  # a stated preference or principle: "I always cycle"


@dataclass(frozen=True)
class Interaction:
    user_id: str
    messages: tuple[Message, ...]  # the conversation up to the response; ends with a user turn
    response: str | None
    feedback: Feedback = field(default_factory=Feedback)
    source: str = ""  # "file:line", for messages that point back at the input

    @property
    def sft_target(self) -> str | None:
        """The answer the user wants: the edit, else the chosen one, else an accepted response."""
        if self.feedback.edited is not None:
            return self.feedback.edited
        if self.feedback.chosen is not None:
            return self.feedback.chosen
        if self.feedback.rating == -1:
            return None
        return self.response

    @property
    def preference_pair(self) -> tuple[str, str] | None:
        """(preferred, dispreferred), from an explicit pair or an edit of the response."""
        if self.feedback.chosen is not None and self.feedback.rejected is not None:
            return self.feedback.chosen, self.feedback.rejected
        if self.feedback.edited is not None and self.response is not None:
            return self.feedback.edited, self.response
        return None


def text_problem(value: Any, *, allow_empty: bool = False) -> str | None:
    """Why ``value`` cannot be a text of a conversation (None when it can)."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not allow_empty and not value.strip():
        return "must not be empty"
    if len(value) > MAX_TEXT_CHARS:
        return f"is {len(value):,} characters long; the limit is {MAX_TEXT_CHARS:,}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        # JSON's "\ud800" decodes to a lone surrogate no database or tokenizer takes.
        return f"holds a lone surrogate ({value[error.start]!r} at {error.start})"
    return None


def message_problems(raw: Any) -> list[tuple[str, str]]:
    """(field, problem) for everything wrong with a conversation of {role, content}
    messages ending with the user's turn; the one check the log file and the feedback
    API share."""
    if not isinstance(raw, list | tuple) or not raw:
        return [("messages", "expected a non-empty list of {role, content}")]
    problems = []
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            problems.append((where, "expected an object with role and content"))
            continue
        role = item.get("role")
        if role not in ROLES:
            problems.append((f"{where}.role", f"{role!r} is not one of {ROLES}"))
        if (problem := text_problem(item.get("content"))) is not None:
            problems.append((f"{where}.content", problem))
    last = raw[-1]
    if not problems and (not isinstance(last, dict) or last.get("role") != "user"):
        role = last.get("role") if isinstance(last, dict) else None
        problems.append(
            ("messages", f"must end with the user's turn (the last message's role is {role!r})")
        )
    return problems


def _string(value: Any, path: Path, line: int, name: str, *, allow_empty: bool = False) -> str:
    if (problem := text_problem(value, allow_empty=allow_empty)) is not None:
        raise LogFormatError(path, line, name, problem)
    return value


def _parse_messages(raw: Any, path: Path, line: int) -> tuple[Message, ...]:
    problems = message_problems(raw)
    if problems:
        field_name, problem = problems[0]
        raise LogFormatError(path, line, field_name, problem)
    return tuple(Message(item["role"], item["content"]) for item in raw)


def _parse_feedback(raw: Any, path: Path, line: int) -> Feedback:
    if raw is None:
        return Feedback()
    if not isinstance(raw, dict):
        raise LogFormatError(
            path, line, "feedback", f"expected an object, got {type(raw).__name__}"
        )
    rating = raw.get("rating")
    if rating is not None and (isinstance(rating, bool) or rating not in (1, -1)):
        raise LogFormatError(path, line, "feedback.rating", f"must be 1 or -1, got {rating!r}")
    texts = {
        key: _string(raw[key], path, line, f"feedback.{key}")
        for key in ("edited", "chosen", "rejected", "note")
        if raw.get(key) is not None
    }
    if ("chosen" in texts) != ("rejected" in texts):
        missing = "rejected" if "chosen" in texts else "chosen"
        raise LogFormatError(
            path, line, f"feedback.{missing}", "chosen and rejected come as a pair"
        )
    if "chosen" in texts and texts["chosen"].strip() == texts["rejected"].strip():
        raise LogFormatError(path, line, "feedback.rejected", "is the same text as chosen")
    return Feedback(rating=rating, **texts)


def parse_record(record: Any, path: Path, line: int) -> Interaction:
    """Validate one decoded JSON value as an interaction."""
    if not isinstance(record, dict):
        raise LogFormatError(
            path, line, None, f"expected a JSON object, got {type(record).__name__}"
        )
    split = record.get("split", "history")
    if split != "history":
        raise LogFormatError(
            path,
            line,
            "split",
            f"{split!r} records are not interactions (only 'history' is); "
            "run episode files with `adaptkit arena run`",
        )

    intent = record.get("intent")
    user_field = "user" if "user" in record else "user_id"
    user = record.get(user_field)
    if intent is not None:
        intent = _string(intent, path, line, "intent")
        prefix = INTENT_USER_PREFIX.match(intent)
        if prefix:
            user = user if user is not None else prefix.group(1)
            intent = intent[prefix.end() :]
    if user is None:
        raise LogFormatError(path, line, "user", "missing: every interaction names its user")
    try:
        user_id = validate_user_id(user, source=f"'{user_field}'")
    except InvalidUserIdError as error:
        raise LogFormatError(path, line, user_field, str(error)) from None

    if "messages" in record:
        messages = _parse_messages(record["messages"], path, line)
    elif "prompt" in record:
        messages = (Message("user", _string(record["prompt"], path, line, "prompt")),)
    elif intent is not None:
        observation = record.get("observation")
        text = intent
        if observation is not None:
            text = f"{_string(observation, path, line, 'observation')}\n\n{intent}"
        messages = (Message("user", text),)
    else:
        raise LogFormatError(path, line, "prompt", "missing: give 'prompt' or 'messages'")

    feedback = _parse_feedback(record.get("feedback"), path, line)
    response = record.get("response")
    if response is not None:
        response = _string(response, path, line, "response")
    elif feedback.chosen is None:
        raise LogFormatError(
            path, line, "response", "missing (only a chosen/rejected pair may omit it)"
        )
    return Interaction(user_id, messages, response, feedback, f"{path}:{line}")


def decode_json(
    text: str, invalid: Callable[[int, str], Exception], line: int | None = None
) -> Any:
    """``text`` decoded; when it is not JSON, raises ``invalid(line, problem)``, the line
    being ``line`` or, when None, the one in ``text`` where decoding failed."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = error.lineno if line is None else line
        raise invalid(where, f"invalid JSON ({error.msg})") from None
    except RecursionError:
        raise invalid(line or 1, "JSON nested too deeply") from None
    except ValueError as error:  # an integer of thousands of digits
        raise invalid(line or 1, f"unreadable JSON value ({error})") from None


def json_lines(
    lines: Iterable[str], invalid: Callable[[int, str], Exception]
) -> Iterator[tuple[int, Any]]:
    """(line number from 1, decoded value) of every non-blank line of a JSON Lines text;
    a line that is not JSON raises ``invalid(line number, problem)``."""
    for line_number, line in enumerate(lines, start=1):
        if line.strip():
            yield line_number, decode_json(line, invalid, line_number)


def _text_lines(handle: BinaryIO, path: Path) -> Iterator[str]:
    """The file's lines as text, each at most MAX_LINE_BYTES and valid UTF-8."""
    line_number = 0
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        line_number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise LogFormatError(
                path, line_number, None, f"the line is longer than {MAX_LINE_BYTES:,} bytes"
            )
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise LogFormatError(
                path,
                line_number,
                None,
                f"not UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1}); "
                "save the log as UTF-8",
            ) from None


def read_log(path: str | Path) -> list[Interaction]:
    """Read and validate a whole log; raises on the first malformed line."""
    path = Path(path)
    if not path.is_file():
        raise LogFormatError(path, 0, None, "no such file")
    interactions = []
    with path.open("rb") as handle:
        for line_number, record in json_lines(
            _text_lines(handle, path),
            lambda line, problem: LogFormatError(path, line, None, problem),
        ):
            interactions.append(parse_record(record, path, line_number))
    if not interactions:
        raise LogFormatError(path, 0, None, "the log holds no interactions")
    return interactions


def interactions_digest(interactions: Iterable[Interaction]) -> str:
    """sha256 over the training-relevant content, independent of file paths."""
    digest = hashlib.sha256()
    for interaction in interactions:
        payload = asdict(interaction)
        payload.pop("source")
        digest.update(json.dumps(payload, sort_keys=True).encode())
    return digest.hexdigest()
