"""Episode files: each user's history, their deployment requests, and user-free probes.

The format is described in ``docs/episodes.md``. A file is JSON Lines or one JSON
list (AdaptArena's ``deployment_task.json`` loads unchanged). The whole file is
validated before anything runs: the first malformed record raises
``EpisodeFormatError`` naming the file, the line (JSON Lines) or the record index
(JSON list), and the field.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from adaptkit.errors import InputError, InvalidUserIdError, LogFormatError
from adaptkit.interactions import (
    INTENT_USER_PREFIX,
    Interaction,
    decode_json,
    json_lines,
    parse_record,
)
from adaptkit.user_ids import validate_user_id

SPLITS = ("history", "deployment", "probe")
STRING_MATCH = "string_match"
REFERENCE_KEYS = ("must_include", "exact_match", "fuzzy_match", "must_exclude")


class EpisodeFormatError(InputError):
    """A record of an episode file is malformed; names file, line or record, and field."""

    def __init__(self, path: Path, where: str, field: str | None, problem: str) -> None:
        self.path, self.where, self.field, self.problem = str(path), where, field, problem
        what = f"field '{field}': {problem}" if field else problem
        super().__init__(
            f"{path}{where}: {what}. Fix that record (the format is in docs/episodes.md); "
            "nothing was run."
        )


@dataclass(frozen=True)
class EvalSpec:
    """A record's ``eval`` block: WebArena's string rules plus adaptkit's ``must_exclude``."""

    eval_types: tuple[str, ...]
    must_include: tuple[str, ...] = ()
    exact_match: str | None = None
    fuzzy_match: tuple[str, ...] = ()
    must_exclude: tuple[str, ...] = ()

    @property
    def skip_reason(self) -> str | None:
        """Why this task cannot be scored offline, or None when it can."""
        live = [t for t in self.eval_types if t != STRING_MATCH]
        if live:
            return (
                f"eval_types {', '.join(live)} need a live web environment; "
                "only string_match is scored offline"
            )
        return None


@dataclass(frozen=True)
class Task:
    """A deployment request (a user's test) or a probe (general capability, no user)."""

    task_id: int | str
    split: str
    user_id: str | None
    intent: str  # the request as the model sees it: user prefix stripped, observation prepended
    oracle_intent: str | None  # the same request with the preference stated
    eval: EvalSpec
    order: int
    source: str  # "file:line" or "file[index]"


@dataclass(frozen=True)
class HistoryRecord:
    """One past interaction of a user, in timeline order."""

    task_id: int | str
    user_id: str
    order: int
    interaction: Interaction
    source: str

    @property
    def text(self) -> str:
        """Request and accepted answer, as retrieval indexes and the memory prompt shows it."""
        request = self.interaction.messages[-1].content
        answer = self.interaction.sft_target or self.interaction.response or ""
        return f"{request}\n{answer}"


@dataclass(frozen=True)
class EpisodeSuite:
    """A validated episode file, grouped per user, each list in timeline order."""

    path: Path
    history: dict[str, tuple[HistoryRecord, ...]]
    deployment: dict[str, tuple[Task, ...]]
    probes: tuple[Task, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def users(self) -> list[str]:
        """Users with deployment requests, sorted."""
        return sorted(self.deployment)

    def select(self, users: Sequence[str]) -> EpisodeSuite:
        """The suite restricted to ``users`` (in the given order); unknown names raise."""
        unknown = [u for u in users if u not in self.deployment]
        if unknown:
            raise InputError(
                f"--users {','.join(unknown)}: not users with deployment requests in "
                f"{self.path} (it has: {', '.join(self.users)})"
            )
        return replace(
            self,
            history={u: self.history.get(u, ()) for u in users},
            deployment={u: self.deployment[u] for u in users},
        )


def _records(path: Path) -> Iterator[tuple[str, int, Any]]:
    """(where, position, decoded value) for every record; where is ':LINE' or '[INDEX]'."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise EpisodeFormatError(path, "", None, f"not UTF-8 ({error.reason})") from None

    def invalid(line: int, problem: str) -> EpisodeFormatError:
        return EpisodeFormatError(path, f":{line}", None, problem)

    if text.lstrip().startswith("["):
        for index, value in enumerate(decode_json(text, invalid)):
            yield f"[{index}]", index, value
        return
    for line_number, value in json_lines(text.splitlines(), invalid):
        yield f":{line_number}", line_number, value


def _string_list(value: Any, fail: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str) and name.endswith("fuzzy_match"):
        value = [value]  # WebArena writes a lone fuzzy_match reference as a string
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        fail(name, f"expected a list of non-empty strings, got {value!r}")
    return tuple(value)


def _parse_eval(raw: Any, fail: Any) -> EvalSpec:
    if not isinstance(raw, dict):
        fail("eval", f"expected an object with eval_types, got {type(raw).__name__}")
    types = raw.get("eval_types")
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        fail("eval.eval_types", f"expected a non-empty list of strings, got {types!r}")
    if STRING_MATCH not in types:
        return EvalSpec(tuple(types))  # scored elsewhere or skipped: references not needed
    refs = raw.get("reference_answers")
    if not isinstance(refs, dict):
        fail("eval.reference_answers", f"string_match needs an object, got {refs!r}")
    present = [k for k in REFERENCE_KEYS if refs.get(k) is not None]
    if not present:
        fail("eval.reference_answers", f"string_match needs one of {', '.join(REFERENCE_KEYS)}")
    exact = refs.get("exact_match")
    if exact is not None and (not isinstance(exact, str) or not exact.strip()):
        fail("eval.reference_answers.exact_match", f"expected a non-empty string, got {exact!r}")
    lists = {
        key: _string_list(refs[key], fail, f"eval.reference_answers.{key}")
        for key in ("must_include", "fuzzy_match", "must_exclude")
        if refs.get(key) is not None
    }
    return EvalSpec(tuple(types), exact_match=exact, **lists)


def _strip_user_prefix(text: str) -> tuple[str | None, str]:
    match = INTENT_USER_PREFIX.match(text)
    return (match.group(1), text[match.end() :]) if match else (None, text)


def _parse_record(value: Any, path: Path, where: str, position: int) -> HistoryRecord | Task:
    def fail(name: str | None, problem: str) -> None:
        raise EpisodeFormatError(path, where, name, problem)

    if not isinstance(value, dict):
        fail(None, f"expected a JSON object, got {type(value).__name__}")
    task_id = value.get("task_id")
    if task_id is None or isinstance(task_id, bool) or not isinstance(task_id, (int, str)):
        fail("task_id", f"required, an int or a string; got {task_id!r}")
    split = value.get("split", "deployment")
    if split not in SPLITS:
        fail("split", f"{split!r} is not one of {', '.join(SPLITS)}")
    order = value.get("order", position)
    if isinstance(order, bool) or not isinstance(order, int):
        fail("order", f"expected an int, got {order!r}")
    intent = value.get("intent")
    if not isinstance(intent, str) or not intent.strip():
        fail("intent", f"required, a non-empty string; got {intent!r}")
    source = f"{path}{where}"

    if split == "history":
        try:
            interaction = parse_record(value, path, position)
        except LogFormatError as error:
            fail(error.field, error.problem)
        return HistoryRecord(task_id, interaction.user_id, order, interaction, source)

    prefix_user, request = _strip_user_prefix(intent)
    user = value.get("user_id", prefix_user)
    if user is None and split == "deployment":
        fail("user_id", "missing: give user_id or prefix the intent with 'Name: '")
    if user is not None:
        try:
            validate_user_id(user, source="'user_id'")
        except InvalidUserIdError as error:
            fail("user_id", str(error))
    observation = value.get("observation")
    if observation is not None:
        if not isinstance(observation, str):
            fail("observation", f"expected a string, got {type(observation).__name__}")
        request = f"{observation}\n\n{request}"
    oracle = value.get("oracle_intent")
    if oracle is not None:
        if not isinstance(oracle, str) or not oracle.strip():
            fail("oracle_intent", f"expected a non-empty string, got {oracle!r}")
        oracle = _strip_user_prefix(oracle)[1]
        if observation is not None:
            oracle = f"{observation}\n\n{oracle}"
    if "eval" not in value:
        fail("eval", f"required for {split} records")
    spec = _parse_eval(value["eval"], fail)
    return Task(task_id, split, user, request, oracle, spec, order, source)


def load_episodes(path: str | Path) -> EpisodeSuite:
    """Read and validate a whole episode file; raises on the first malformed record."""
    path = Path(path)
    if not path.is_file():
        raise EpisodeFormatError(path, "", None, "no such file")
    seen: dict[int | str, str] = {}
    history: dict[str, list[HistoryRecord]] = {}
    deployment: dict[str, list[Task]] = {}
    probes: list[Task] = []
    for where, position, value in _records(path):
        record = _parse_record(value, path, where, position)
        if record.task_id in seen:
            raise EpisodeFormatError(
                path, where, "task_id", f"{record.task_id!r} already used at {seen[record.task_id]}"
            )
        seen[record.task_id] = record.source
        if isinstance(record, HistoryRecord):
            history.setdefault(record.user_id, []).append(record)
        elif record.split == "probe":
            probes.append(record)
        else:
            deployment.setdefault(record.user_id, []).append(record)
    if not deployment and not probes:
        raise EpisodeFormatError(path, "", None, "the file holds no deployment or probe records")

    def ordered(items: list[Any]) -> tuple[Any, ...]:
        return tuple(sorted(items, key=lambda r: r.order))  # stable: ties keep file order

    return EpisodeSuite(
        path=path,
        history={u: ordered(r) for u, r in history.items()},
        deployment={u: ordered(t) for u, t in deployment.items()},
        probes=ordered(probes),
    )
