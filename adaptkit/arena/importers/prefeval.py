"""PrefEval (Zhao et al., 2025): a preference revealed in conversation, tested later.

Reads one topic of PrefEval's implicit-preference data as its repository ships it,
``benchmark_dataset/implicit_preference/{choice-based,persona-driven}/TOPIC.json``
(a list of records with ``preference`` and ``question``), together with
``--mcq benchmark_dataset/mcq_options/TOPIC.json``, the same records in the same
order with ``classification_task_options`` (four options, the first one following
the preference: PrefEval's own convention).

- History: the conversation that reveals the preference. Choice-based records:
  ``conversation.query`` with the record's ``options`` as a lettered list, answered
  with the option the user chose (``aligned_op``). Persona-driven records: every
  turn of ``conversation`` (``{"0": {"user", "assistant"}, ...}``) as it was.
- Deployment: PrefEval's multiple-choice form, ``question`` with the four options
  lettered (A)-(D) in a fixed shuffle per record; it passes when the answer names the
  first option's letter in parentheses and no other letter so (``label_eval``).
- Oracle: the stated ``preference`` before the same question.

One record is one user (``--per-user K``: K consecutive records are one user who
revealed K preferences, then is asked K questions).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from adaptkit.arena.importers.common import (
    ImportFormatError,
    ImportOptions,
    Record,
    deployment,
    history,
    keep,
    label_eval,
    read_json,
    text_field,
)
from adaptkit.errors import InputError

LETTERS = "ABCD"
_TOPIC = re.compile(r"[^A-Za-z0-9-]")  # what a user id cannot hold of the file's name
ANSWER_FORMAT = "Answer with the letter of one option: (A), (B), (C) or (D)."


def lettered(question: str, options: list[str], correct: str, seed: str) -> tuple[str, str]:
    """``question`` with ``options`` in a fixed shuffle as "(A) ..." lines, and the
    letter, in parentheses, of ``correct``."""
    order = random.Random(seed).sample(options, len(options))
    lines = [f"({LETTERS[i]}) {option}" for i, option in enumerate(order)]
    text = "\n".join([question, "", *lines, "", ANSWER_FORMAT])
    return text, f"({LETTERS[order.index(correct)]})"


def _options(record: Any, name: str, path: Path, where: str) -> list[str]:
    options = record.get(name) if isinstance(record, dict) else None
    if (
        not isinstance(options, list)
        or len(options) != len(LETTERS)
        or not all(isinstance(o, str) and o.strip() for o in options)
        or len(set(options)) != len(options)
    ):
        raise ImportFormatError(
            path, where, name, f"expected {len(LETTERS)} different non-empty strings"
        )
    return options


def _revealing_turns(record: dict[str, Any], path: Path, where: str) -> list[tuple[str, str]]:
    """(request, accepted answer) pairs of the conversation that reveals the preference."""
    conversation = record.get("conversation")
    if not isinstance(conversation, dict) or not conversation:
        raise ImportFormatError(path, where, "conversation", "expected a non-empty object")
    if "query" in conversation:  # choice-based: the user picks the option that fits them
        spot = f"{where}.conversation"
        options = _options(record, "options", path, where)
        chosen = text_field(record, "aligned_op", path, where)
        if chosen not in options:
            raise ImportFormatError(path, where, "aligned_op", "is not one of 'options'")
        query = text_field(conversation, "query", path, spot)
        request, letter = lettered(query, options, chosen, f"history:{where}:{query}")
        return [(request, f"{letter} {chosen}")]
    turns = []
    for key in sorted(conversation, key=lambda k: (len(k), k)):  # "0", "1", ..., "10"
        spot = f"{where}.conversation[{key!r}]"
        turn = conversation[key]
        turns.append(
            (text_field(turn, "user", path, spot), text_field(turn, "assistant", path, spot))
        )
    return turns


def import_prefeval(path: Path, options: ImportOptions) -> list[Record]:
    options.refuse("prefeval", "golds", "instruction")
    if not options.mcq:
        raise InputError("--mcq: required for prefeval (mcq_options/TOPIC.json of the same topic)")
    mcq_path = Path(options.mcq)
    records_in, choices = read_json(path, "PATH"), read_json(mcq_path, "--mcq")
    for source, value in ((path, records_in), (mcq_path, choices)):
        if not isinstance(value, list) or not value:
            raise ImportFormatError(source, "", None, "expected a non-empty list of records")
    if len(choices) != len(records_in):
        raise ImportFormatError(
            mcq_path,
            "",
            None,
            f"has {len(choices)} records, {path} has {len(records_in)}: "
            "give the mcq_options file of the same topic",
        )
    users: list[list[tuple[list[tuple[str, str]], str, str, str]]] = []
    for index, (record, choice) in enumerate(zip(records_in, choices, strict=True)):
        where = f"[{index}]"
        question = text_field(record, "question", path, where)
        if text_field(choice, "question", mcq_path, where) != question:
            raise ImportFormatError(
                mcq_path, where, "question", f"differs from {path}{where}: not the same topic"
            )
        preference = text_field(record, "preference", path, where)
        offered = _options(choice, "classification_task_options", mcq_path, where)
        request, letter = lettered(question, offered, offered[0], f"mcq:{index}:{question}")
        item = (_revealing_turns(record, path, where), request, letter, preference)
        if index % options.per_user == 0:
            users.append([])
        users[-1].append(item)

    out: list[Record] = []
    for number, items in enumerate(keep(users, options.max_users)):
        user = f"prefeval-{_TOPIC.sub('-', path.stem)[:40]}-{number:03d}"
        past = keep([turn for turns, *_ in items for turn in turns], options.max_history)
        for order, (request, answer) in enumerate(past):
            out.append(history(f"{user}-h{order}", user, order, request, answer))
        for offset, (_, request, letter, preference) in enumerate(keep(items, options.max_tasks)):
            check = label_eval([letter], [f"({x})" for x in LETTERS])
            oracle = f"{preference}\n\n{request}"
            out.append(
                deployment(f"{user}-q{offset}", user, len(past) + offset, request, check, oracle)
            )
    return out
