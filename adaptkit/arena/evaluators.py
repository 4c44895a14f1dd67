"""WebArena's string rules, offline: must_include (with ``|OR|``), exact_match, fuzzy_match,
plus adaptkit's must_exclude.

Answers and references are compared after the same normalisation WebArena's
``StringEvaluator.clean_answer`` does (strip, drop surrounding quotes, lowercase),
plus folding runs of whitespace. ``fuzzy_match`` asks a ``Judge``; the default is
token-level F1 >= 0.5 against any reference (WebArena asks an LLM, which we do not
have offline: plug a stronger judge in through the Protocol).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from adaptkit.arena.episodes import EvalSpec

OR_SEPARATOR = " |OR| "
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return " ".join(text.lower().split())


def alternatives(reference: str) -> list[str]:
    """``"bicycle |OR| bike"`` -> ``["bicycle", "bike"]`` (normalized, empties dropped)."""
    return [normalize(part) for part in reference.split(OR_SEPARATOR.strip()) if part.strip()]


def contains(answer: str, reference: str) -> bool:
    """True when any alternative of ``reference`` occurs in ``answer`` (both normalized)."""
    clean = normalize(answer)
    return any(alt in clean for alt in alternatives(reference))


class Judge(Protocol):
    """Decides whether ``answer`` means the same as one of ``references`` for ``intent``."""

    def __call__(self, answer: str, references: Sequence[str], intent: str) -> bool: ...


def token_f1(answer: str, reference: str) -> float:
    predicted = Counter(_WORD.findall(normalize(answer)))
    wanted = Counter(_WORD.findall(normalize(reference)))
    overlap = sum((predicted & wanted).values())
    if overlap == 0:
        return 0.0
    precision = overlap / sum(predicted.values())
    recall = overlap / sum(wanted.values())
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class TokenF1Judge:
    """The offline default: token F1 against any reference at or above ``threshold``."""

    threshold: float = 0.5

    def __call__(self, answer: str, references: Sequence[str], intent: str) -> bool:
        return any(token_f1(answer, ref) >= self.threshold for ref in references)


@dataclass(frozen=True)
class Score:
    """The outcome of one answer: passed, or skipped with the reason; and each check."""

    passed: bool
    checks: dict[str, bool] = field(default_factory=dict)
    skipped: str | None = None


def score(answer: str, spec: EvalSpec, *, intent: str = "", judge: Judge | None = None) -> Score:
    """1 when every present check passes, else 0; tasks needing a live site are skipped."""
    if spec.skip_reason is not None:
        return Score(False, skipped=spec.skip_reason)
    checks: dict[str, bool] = {}
    for index, reference in enumerate(spec.must_include):
        checks[f"must_include[{index}]"] = contains(answer, reference)
    if spec.exact_match is not None:
        checks["exact_match"] = normalize(answer) == normalize(spec.exact_match)
    if spec.fuzzy_match:
        checks["fuzzy_match"] = (judge or TokenF1Judge())(answer, spec.fuzzy_match, intent)
    for index, reference in enumerate(spec.must_exclude):
        checks[f"must_exclude[{index}]"] = not contains(answer, reference)
    return Score(all(checks.values()), checks)


def excluded_hits(answer: str, spec: EvalSpec) -> list[str]:
    """The must_exclude values that occur in ``answer`` (e.g. another user's habit)."""
    return [ref for ref in spec.must_exclude if contains(answer, ref)]
