"""What every importer shares: its flags, its errors, label checks, and the atomic write."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptkit.arena.episodes import load_episodes
from adaptkit.errors import InputError

Record = dict[str, Any]


class ImportFormatError(InputError):
    """A benchmark file is not in the shape its importer reads; names file, record, field."""

    def __init__(self, path: str | Path, where: str, field: str | None, problem: str) -> None:
        self.path, self.where, self.field, self.problem = str(path), where, field, problem
        what = f"field '{field}': {problem}" if field else problem
        super().__init__(
            f"{path}{where}: {what}. The shapes each importer reads are in docs/arena.md "
            "('Importing public benchmarks'); nothing was written."
        )


@dataclass(frozen=True)
class ImportOptions:
    """``adaptkit arena import``'s flags (one per field). Each importer reads the ones
    that concern it and refuses the ones that do not, naming the flag."""

    golds: str = field(
        default="", metadata={"help": "lamp: the outputs file with the gold answers (required)"}
    )
    mcq: str = field(
        default="",
        metadata={"help": "prefeval: the mcq_options file of the same topic (required)"},
    )
    instruction: str = field(
        default="",
        metadata={
            "help": "peft-u: the task instruction put before each text "
            "[default: name the labels the file uses]"
        },
    )
    per_user: int = field(
        default=1,
        metadata={"help": "prefeval: preferences (consecutive records) given to one user"},
    )
    max_users: int = field(default=0, metadata={"help": "keep the first N users (0: all)"})
    max_history: int = field(
        default=0, metadata={"help": "keep each user's first N history records (0: all)"}
    )
    max_tasks: int = field(
        default=0, metadata={"help": "keep each user's first N deployment requests (0: all)"}
    )

    def __post_init__(self) -> None:
        problems = [
            f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}"
            for name in ("max_users", "max_history", "max_tasks")
            if getattr(self, name) < 0
        ]
        if self.per_user < 1:
            problems.append(f"--per-user must be >= 1, got {self.per_user}")
        if problems:
            raise InputError("; ".join(problems))

    def refuse(self, fmt: str, *names: str) -> None:
        """Raise when a flag another format reads was given to ``fmt``."""
        given = [n for n in names if getattr(self, n) != getattr(ImportOptions, n)]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise InputError(f"{flags}: not read by the {fmt} importer; drop it")


def read_json(path: Path, flag: str) -> Any:
    """The decoded JSON file ``path`` (given by ``flag``), or an error naming both."""
    if not path.is_file():
        raise InputError(f"{flag} {path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ImportFormatError(path, "", None, f"not UTF-8 ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise ImportFormatError(
            path, f":{error.lineno}", None, f"not JSON ({error.msg}, column {error.colno})"
        ) from None


def text_field(record: Any, name: str, path: Path, where: str) -> str:
    """``record[name]`` as a non-empty string, else an error naming file, record and field."""
    if not isinstance(record, dict):
        raise ImportFormatError(path, where, None, f"expected an object, got {_kind(record)}")
    value = record.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # a rating or a label written as a number
    if not isinstance(value, str) or not value.strip():
        raise ImportFormatError(path, where, name, f"expected a non-empty string, got {value!r}")
    return value.strip()


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def label_eval(gold: Sequence[str], labels: Iterable[str]) -> Record:
    """A string_match block that passes an answer naming the gold label(s) and no other.

    Checks are substring checks (WebArena's), so a bare label can occur inside another:
    "1" in "10", "positive" in "veryPositive", "Hateful" in "Non-hateful". Hence:

    - single-digit labels (ratings 1-5, intensities 0-2): every other digit is excluded,
      so "10" or "4 out of 5" never counts as a single rating;
    - other labels: every other label of the set is excluded, unless it occurs inside a
      gold label (gold "Non-hateful" cannot exclude "Hateful"; the gold itself decides).
    """
    gold_set = list(dict.fromkeys(gold))
    if all(len(label) == 1 and label.isdigit() for label in [*gold_set, *labels]):
        others = [d for d in "0123456789" if d not in gold_set]
    else:
        lowered = [g.lower() for g in gold_set]
        others = sorted(
            {
                label
                for label in labels
                if label not in gold_set and not any(label.lower() in g for g in lowered)
            }
        )
    refs: Record = {"must_include": gold_set}
    if others:
        refs["must_exclude"] = others
    return {"eval_types": ["string_match"], "reference_answers": refs}


def fuzzy_eval(reference: str) -> Record:
    """A generation task: the offline judge compares the answer with the reference."""
    return {"eval_types": ["string_match"], "reference_answers": {"fuzzy_match": [reference]}}


def history(task_id: str, user: str, order: int, intent: str, response: str) -> Record:
    return {
        "task_id": task_id,
        "user_id": user,
        "split": "history",
        "order": order,
        "intent": intent,
        "response": response,
    }


def deployment(
    task_id: str, user: str, order: int, intent: str, eval_block: Record, oracle: str | None = None
) -> Record:
    record: Record = {
        "task_id": task_id,
        "user_id": user,
        "split": "deployment",
        "order": order,
        "intent": intent,
        "eval": eval_block,
    }
    if oracle:
        record["oracle_intent"] = oracle
    return record


def keep(items: Sequence[Any], limit: int) -> Sequence[Any]:
    """The first ``limit`` items (0: all)."""
    return items[:limit] if limit else items


def write_episodes(records: Sequence[Record], out: Path) -> None:
    """Write ``records`` as JSON Lines at ``out`` atomically: into a temporary file beside
    it, checked with the arena's own loader, then renamed over ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            for record in records:
                stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        load_episodes(temporary)  # what was written runs with `adaptkit arena run`
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
