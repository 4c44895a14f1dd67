"""Principles: a compact statement of a user's habits, derived from their history.

Internalizing a user's raw answers over and over teaches an adapter their templates,
and it pastes them into requests no habit applies to. Experience stated as principles
("When asked things like 'Write a message to ...', this user's answers include
'Warm regards, Kim'") transfers to new kinds of request and stays out of unrelated ones
(Rethinking Continual Experience Internalization, 2026). The ``principles`` rule
(``learning.rules``) puts these statements into a teacher's prompt.

The procedure is plain and deterministic:

1. the user's explicit notes come first, verbatim;
2. a **habit phrase** is a run of 2 to ``MAX_PHRASE_WORDS`` words (compared
   case-folded) that occurs in the answers to at least ``MIN_SUPPORT`` different
   requests, holds a word that is not a stopword, and is not an echo: in most of those
   answers, some of its words are not in the request (so "the broken heater" repeated
   from "... about the broken heater" is not a habit, "Warm regards, Kim" is);
3. phrases held by the same answers are merged where they overlap in those answers, so
   a template's sentence is one habit; habits are ranked by how many answers hold
   them, then by length;
4. a user whose short answers form a small label set (``learning.decisions``) gets one
   statement naming the labels;
5. at most ``MAX_PRINCIPLES`` statements in all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adaptkit.learning.decisions import label_set

if TYPE_CHECKING:
    from adaptkit.learning.rules import Example

# Requests of many kinds, none a user's: the principles rule distills its teacher's
# answers on them, so the adapter learns where a habit applies (a note of a new kind)
# and where it does not (a question). Unlike the KL anchor's prompts and the gate's
# probes, which measure and guard general ability and must not be trained to.
GENERAL_PROMPTS: tuple[str, ...] = (
    "Write a short note to a coworker saying the meeting moved to 3 pm.",
    "Draft a two-line message inviting friends to a picnic on Saturday.",
    "Write a one-line postcard to my grandmother from the beach.",
    "Reply in one sentence to a customer asking when their order ships.",
    "Suggest a name for a goldfish.",
    "How do I make a cup of tea? Answer in one sentence.",
    "Give me one benefit of regular exercise.",
    "What does a librarian do? One sentence.",
    "Suggest a board game for four players.",
    "How many sides does a hexagon have?",
    "Translate 'thank you' into Spanish.",
    "Tell me one fun fact about octopuses.",
)
MAX_PHRASE_WORDS = 8
MIN_SUPPORT = 2
MAX_PRINCIPLES = 6
_WORD = re.compile(r"\w+")
STOPWORDS = frozenset(
    [
        "a",
        "about",
        "all",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "had",
        "has",
        "have",
        "he",
        "her",
        "here",
        "his",
        "i",
        "in",
        "is",
        "it",
        "its",
        "me",
        "my",
        "one",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "she",
        "so",
        "that",
        "the",
        "their",
        "them",
        "they",
        "this",
        "to",
        "was",
        "we",
        "were",
        "what",
        "when",
        "which",
        "who",
        "will",
        "with",
        "you",
        "your",
    ]
)


@dataclass(frozen=True)
class Habit:
    phrase: str  # as first written in an answer
    request: str  # the shortest request whose answer holds it
    support: int  # answers holding it


def _words(text: str) -> list[str]:
    return text.split()


def _content(word: str) -> set[str]:
    return {w for w in _WORD.findall(word.lower()) if w not in STOPWORDS}


def habit_phrases(examples: Sequence[Example]) -> list[Habit]:
    """The habit phrases of ``examples``' answers (steps 2 and 3), best first.

    Phrases held by the same answers that overlap in them are one phrase: a template's
    sentence of 15 words is one habit, not eight overlapping runs of eight.
    """
    answers = [_words(e.completion) for e in examples]
    # phrase (folded words) -> indices of the examples holding it
    seen: dict[tuple[str, ...], set[int]] = {}
    for index, words in enumerate(answers):
        folded = [w.lower() for w in words]
        for n in range(2, MAX_PHRASE_WORDS + 1):
            for start in range(len(words) - n + 1):
                seen.setdefault(tuple(folded[start : start + n]), set()).add(index)
    requests = [e.messages[-1]["content"] for e in examples]
    groups: dict[frozenset[int], list[tuple[str, ...]]] = {}
    for key, holders in seen.items():
        content = set().union(*(_content(w) for w in key))
        if len({requests[i] for i in holders}) < MIN_SUPPORT or not content:
            continue
        echoed = sum(content <= _content(requests[i]) for i in holders)
        if echoed * 2 < len(holders):
            groups.setdefault(frozenset(holders), []).append(key)
    habits = []
    for holders, keys in groups.items():
        first = min(holders)
        for start, end in _spans(answers[first], keys):
            if end - start >= 2:
                phrase = " ".join(answers[first][start:end])
                habits.append((len(holders), end - start, first, phrase, holders))
    habits.sort(key=lambda h: (-h[0], -h[1], h[2]))
    return [
        Habit(phrase, min((requests[i] for i in holders), key=len), support)
        for support, _, _, phrase, holders in habits
    ]


def _spans(words: list[str], keys: list[tuple[str, ...]]) -> list[tuple[int, int]]:
    """The word spans of ``words`` covered by any of ``keys``, overlapping ones merged."""
    folded = [w.lower() for w in words]
    covered = [False] * len(words)
    for key in keys:
        n = len(key)
        for start in range(len(words) - n + 1):
            if tuple(folded[start : start + n]) == key:
                covered[start : start + n] = [True] * n
    spans, start = [], None
    for index, flag in enumerate([*covered, False]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            spans.append((start, index))
            start = None
    return spans


def principles(examples: Sequence[Example], notes: Sequence[str] = ()) -> list[str]:
    """The user's principles: their notes, a label statement, their habit phrases."""
    statements = [note.strip() for note in notes if note.strip()]
    labels = label_set([e.completion for e in examples])
    if labels:
        asked = min(
            (e.messages[-1]["content"] for e in examples if e.completion.strip() in labels),
            key=len,
        )
        statements.append(
            f'To requests like "{asked}", this user answers with one label only: '
            + ", ".join(labels)
        )
    for habit in habit_phrases(examples):
        if len(statements) >= MAX_PRINCIPLES:
            break
        statements.append(
            f'When asked things like "{habit.request}", this user\'s answers include '
            f'"{habit.phrase}".'
        )
    return statements[:MAX_PRINCIPLES]


__all__ = [
    "GENERAL_PROMPTS",
    "MAX_PHRASE_WORDS",
    "MAX_PRINCIPLES",
    "MIN_SUPPORT",
    "Habit",
    "habit_phrases",
    "principles",
]
