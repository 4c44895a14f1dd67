"""LaMP (Salemi et al., 2023): each question has its own user profile.

Reads LaMP's two files as downloaded: the questions (a list of
``{"id", "input", "profile": [...]}``) and, with ``--golds``, the outputs
(``{"task": "LaMP_N", "golds": [{"id", "output"}]}``). Every question's profile is
a user: its items are the user's history, in file order, and the question is their
deployment request (questions over an identical profile are one user's requests).

| task | profile item -> history record | deployment check |
|---|---|---|
| LaMP_1 citation | "Generate a title for ... abstract": abstract -> title | label "[1]" / "[2]" |
| LaMP_2 news | the question's own instruction over ``text`` -> ``category`` | label |
| LaMP_2 movies | the question's own instruction over ``description`` -> ``tag`` | label |
| LaMP_3 ratings | the question's own instruction over ``text`` -> ``score`` | label "1"-"5" |
| LaMP_4 headlines | "Generate a headline ...": ``text`` -> ``title`` | fuzzy_match |
| LaMP_5 titles | "Generate a title ...": ``abstract`` -> ``title`` | fuzzy_match |

"The question's own instruction" is the question's ``input`` up to its marker
(``article:``, ``description:``, ``review:``) followed by the profile item's text,
so history and request read alike. LaMP has no explicit preference to state: the
episodes carry no ``oracle_intent`` (the oracle condition asks the bare request).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptkit.arena.importers.common import (
    ImportFormatError,
    ImportOptions,
    Record,
    deployment,
    fuzzy_eval,
    history,
    keep,
    label_eval,
    read_json,
    text_field,
)
from adaptkit.errors import InputError
from adaptkit.user_ids import USER_ID_PATTERN

TITLE_PROMPT = "Generate a title for the following abstract of a paper: "
HEADLINE_PROMPT = "Generate a headline for the following article: "


@dataclass(frozen=True)
class LampTask:
    """How one LaMP task's profile items become history and its golds become checks."""

    name: str
    source: str  # the profile item's text field
    answer: str  # the profile item's answer field
    marker: str | None  # where the question's input has its item text; None: ``prompt``
    prompt: str = ""
    labels: tuple[str, ...] | None = None  # a fixed label set; () = gathered from the file
    generation: bool = False


TASKS = {
    "LaMP_1": LampTask("citation", "abstract", "title", None, TITLE_PROMPT, ("[1]", "[2]")),
    "LaMP_2/news": LampTask("news", "text", "category", "article:", labels=()),
    "LaMP_2/movies": LampTask("movies", "description", "tag", "description:", labels=()),
    "LaMP_3": LampTask("rating", "text", "score", "review:", labels=tuple("12345")),
    "LaMP_4": LampTask("headline", "text", "title", None, HEADLINE_PROMPT, generation=True),
    "LaMP_5": LampTask("title", "abstract", "title", None, TITLE_PROMPT, generation=True),
}
_TASK_NAME = re.compile(r"^LaMP_(\d+)$")
_OFFERED = re.compile(r"(?:tags|categories): \[([^\]]*)\]")


def _task(name: str, questions: list[Any], golds_path: Path) -> LampTask:
    if name == "LaMP_2":  # one name, two datasets: news categories, then movie tags
        profiles = (q.get("profile") for q in questions if isinstance(q, dict))
        first = next((p[0] for p in profiles if isinstance(p, list) and p), {})
        name += "/movies" if isinstance(first, dict) and "tag" in first else "/news"
    if name not in TASKS:
        supported = ", ".join(sorted({key.split("/")[0] for key in TASKS}))
        raise ImportFormatError(
            golds_path, "", "task", f"{name!r} is not a LaMP task this importer reads ({supported})"
        )
    return TASKS[name]


def _golds(path: Path) -> tuple[str, dict[str, str]]:
    raw = read_json(path, "--golds")
    if not isinstance(raw, dict):
        raise ImportFormatError(path, "", None, "expected an object with 'task' and 'golds'")
    task = raw.get("task")
    if not isinstance(task, str) or not _TASK_NAME.match(task):
        raise ImportFormatError(path, "", "task", f"expected a name like 'LaMP_3', got {task!r}")
    items = raw.get("golds")
    if not isinstance(items, list):
        raise ImportFormatError(path, "", "golds", f"expected a list, got {items!r:.60}")
    golds = {}
    for index, item in enumerate(items):
        where = f"[golds][{index}]"
        golds[text_field(item, "id", path, where)] = text_field(item, "output", path, where)
    return task, golds


def _request(task: LampTask, question_input: str, item_text: str, path: Path, where: str) -> str:
    """The history request for one profile item, worded like the question."""
    if task.marker is None:
        return task.prompt + item_text
    at = question_input.find(task.marker)
    if at < 0:
        raise ImportFormatError(
            path,
            where,
            "input",
            f"has no {task.marker!r} marker, which LaMP's {task.name} "
            "questions put before the item text",
        )
    return f"{question_input[: at + len(task.marker)]} {item_text}"


def _offered(query: str) -> list[str]:
    """The labels a LaMP_2 question lists ("tags: [sci-fi, comedy, ...]")."""
    match = _OFFERED.search(query)
    return [label.strip() for label in match.group(1).split(",") if label.strip()] if match else []


def _profile(
    task: LampTask, question: Any, query: str, path: Path, where: str
) -> list[tuple[str, str]]:
    """(request, answer) for each profile item of one question, in file order."""
    profile = question.get("profile")
    if not isinstance(profile, list) or not profile:
        raise ImportFormatError(path, where, "profile", "expected a non-empty list")
    items = []
    for number, item in enumerate(profile):
        spot = f"{where}.profile[{number}]"
        if isinstance(item, dict) and item.get(task.source) == "":
            continue  # LaMP has a few items without text (an empty abstract)
        text = text_field(item, task.source, path, spot)
        items.append(
            (_request(task, query, text, path, where), text_field(item, task.answer, path, spot))
        )
    return items


def import_lamp(path: Path, options: ImportOptions) -> list[Record]:
    options.refuse("lamp", "mcq", "instruction", "per_user")
    if not options.golds:
        raise InputError("--golds: required for lamp (the outputs file beside the questions)")
    golds_path = Path(options.golds)
    name, golds = _golds(golds_path)
    questions = read_json(path, "PATH")
    if not isinstance(questions, list):
        raise ImportFormatError(path, "", None, "expected a list of questions")
    task = _task(name, questions, golds_path)
    # Questions over one and the same profile are one user with several requests.
    users: dict[str, tuple[str, list[tuple[str, str]], list[tuple[str, str]]]] = {}
    listed: set[str] = set()  # labels the questions offer ("tags: [...]")
    for index, question in enumerate(questions):
        where = f"[{index}]"
        qid = text_field(question, "id", path, where)
        if qid not in golds:
            raise ImportFormatError(
                path, where, "id", f"{qid!r} has no gold output in {golds_path}"
            )
        gold = golds[qid]
        if task.labels and gold not in task.labels:
            raise ImportFormatError(
                golds_path, "", "golds", f"id {qid!r}: output {gold!r} is not one of {task.labels}"
            )
        query = text_field(question, "input", path, where)
        listed.update(_offered(query))
        items = _profile(task, question, query, path, where)
        key = json.dumps(items)
        if key not in users:
            if options.max_users and len(users) == options.max_users:
                continue
            user = f"lamp-{qid}"
            if not USER_ID_PATTERN.fullmatch(user):
                raise ImportFormatError(path, where, "id", f"{qid!r} cannot name a user")
            users[key] = (user, keep(items, options.max_history), [])
        users[key][2].append((query, gold))

    labels = task.labels or ()
    if task.labels == ():  # the set is what the file uses: offered, gold, profile answers
        used = {a for _, items, asked in users.values() for _, a in [*items, *asked]}
        labels = tuple(sorted(listed | used))
    records: list[Record] = []
    for user, items, asked in users.values():
        for order, (request, answer) in enumerate(items):
            records.append(history(f"{user}-p{order}", user, order, request, answer))
        for number, (query, gold) in enumerate(keep(asked, options.max_tasks)):
            check = fuzzy_eval(gold) if task.generation else label_eval([gold], labels)
            records.append(deployment(f"{user}-q{number}", user, len(items) + number, query, check))
    return records
