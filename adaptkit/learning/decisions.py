"""Decisions: history records whose answer is a choice, learned as that choice.

Trained on "A. Beef burger / B. Falafel wrap / C. ..." answered "I'd go with B. Falafel
wrap, thanks", or on reviews rated "[3]", an adapter's loss goes mostly to the wording
around the choice, and what it learns is to copy an option's text, often the first. A
record recognised as a decision is trained on the decision instead:

A record is a **decision** when (first rule that applies):

1. **options**: its request lists at least two options, one per line, each opening with
   a marker ("A." "A)" "(A)" "[A]" "1." "1)" "(1)" "[1]", letters or numbers, in order),
   and its answer names exactly one of them: the answer is that marker alone ("B",
   "[2]"), or holds that option's text and no other option's;
2. **labels**: its answer is short (at most ``LABEL_WORDS`` words and ``LABEL_CHARS``
   characters) and the user's short answers form a small set: at least ``MIN_LABELED``
   records have a short answer, and they take at most half as many distinct values as
   there are such records (rounded up).

Its **target** is the decision in the user's own form, and its **candidates** the
decisions it was made against, in the same form:

- a label: the answer itself, stripped ("[3]", "4", "positive"); the candidates are the
  user's other labels;
- an option: the way the user names options, read from all their option answers:
  - the marker next to the option's text ("(C) Beach villa", "I'd go with B. Falafel
    wrap") in any answer: the marker as the user writes it, then the option's text as
    listed ("(C) Beach villa", "B. Falafel wrap"), for every option answer of the user.
    A reader checking either the marker or the text finds what it looks for (PrefEval
    scores "(C)", a menu check the dish);
  - else the bare marker in every answer ("B", "(2)"): the marker as the user writes it;
  - else the option's text as listed ("Falafel wrap").

  The candidates are the other options in the same form: the choice term then weighs
  the marker and the text of each option together, not the letter alone (an adapter
  trained on the letter alone learns which letter the user picked most: measured on
  the development suite, "B." for every request).

The update rules then put the loss on the target alone, plus a choice term: the target
against the candidates, a cross-entropy over their summed log-probabilities
(``losses.choice_loss``). Word dropout leaves a decision's request whole: it keeps the
words the answer repeats, which for an option would be the chosen option's words only.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rules call as_decisions: no import cycle at run time
    from adaptkit.learning.rules import Example

LABEL_WORDS = 3
LABEL_CHARS = 24
MIN_LABELED = 3

# "A. text", "A) text", "(A) text", "[A] text", "1. text", "[1]: text" at a line start.
_MARKER = r"(?:\(([A-Za-z]|\d{1,2})\)|\[([A-Za-z]|\d{1,2})\]|([A-Za-z]|\d{1,2})[.)])"
_OPTION = re.compile(rf"^\s*{_MARKER}:?\s+(\S.*)$")
_BARE = re.compile(rf"^(?:{_MARKER}|([A-Za-z]|\d{{1,2}}))$")


@dataclass(frozen=True)
class Option:
    marker: str  # "B", "2"
    text: str  # "Falafel wrap"
    line: str  # the line as listed, stripped: "B. Falafel wrap"


def options(request: str) -> list[Option]:
    """The options a request lists (markers in order A, B, C ... or 1, 2, 3 ...), or []."""
    found = []
    for line in request.splitlines():
        if match := _OPTION.match(line):
            marker = next(g for g in match.groups()[:3] if g)
            found.append(Option(marker.upper(), match.group(4).strip(), line.strip()))
    markers = [o.marker for o in found]
    if len(found) < 2 or len(set(markers)) != len(markers) or not _consecutive(markers):
        return []
    return found


def _consecutive(markers: list[str]) -> bool:
    if all(m.isdigit() for m in markers):
        values = [int(m) for m in markers]
    elif all(m.isalpha() for m in markers):
        values = [ord(m) for m in markers]
    else:
        return False
    return values == list(range(values[0], values[0] + len(values)))


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class Pick:
    """The option an answer names, and how it names it."""

    option: Option
    form: str  # "marker" (the marker alone), "marked" (marker then text) or "text"
    notation: str  # how the answer writes a marker: "{}", "({})", "{}.", "[{}]" ...


def _notation(written: str, marker: str) -> str:
    """``written`` ("(c)", "C.") as a template for any marker: "({})", "{}."."""
    at = written.upper().index(marker)
    return written[:at] + "{}" + written[at + len(marker) :]


def chosen(listed: Sequence[Option], answer: str) -> Pick | None:
    """The option ``answer`` names and how (its marker alone, marker and text, text), or None."""
    by_marker = {o.marker: o for o in listed}
    stripped = answer.strip()
    if bare := _BARE.match(stripped):
        marker = next(g for g in bare.groups() if g).upper()
        if marker not in by_marker:
            return None
        return Pick(by_marker[marker], "marker", _notation(stripped, marker))
    named = [o for o in listed if _fold(o.text) in _fold(answer)]
    if len(named) != 1:
        return None
    option = named[0]
    text = r"\s+".join(re.escape(word) for word in option.text.split())
    mark = re.escape(option.marker)
    if found := re.search(
        rf"(?<![\w(\[])(\({mark}\)|\[{mark}\]|{mark}[.):])\s*{text}", answer, re.IGNORECASE
    ):
        return Pick(option, "marked", _notation(found.group(1), option.marker))
    return Pick(option, "text", "{}")


def _user_form(picks: Sequence[Pick]) -> tuple[str, str]:
    """(form, notation) of the user's option answers: marker and text when any answer
    gives both, the marker when every answer is one, else the text; the notation the
    user writes most (first seen on a tie)."""
    for form in ("marked", "marker"):
        mine = [p.notation for p in picks if p.form == form]
        if mine and (form == "marked" or len(mine) == len(picks)):
            return form, Counter(mine).most_common(1)[0][0]
    return "text", "{}"


def _in_form(option: Option, form: str, notation: str) -> str:
    if form == "marked":
        return f"{notation.format(option.marker)} {option.text}"
    return notation.format(option.marker) if form == "marker" else option.text


def is_short(answer: str) -> bool:
    stripped = answer.strip()
    return 0 < len(stripped) <= LABEL_CHARS and len(stripped.split()) <= LABEL_WORDS


def label_set(answers: Sequence[str]) -> tuple[str, ...]:
    """The user's labels (first-seen order) when their short answers form a small set, else ()."""
    short = [a.strip() for a in answers if is_short(a)]
    distinct = tuple(dict.fromkeys(short))
    if len(short) < MIN_LABELED or len(distinct) > math.ceil(len(short) / 2):
        return ()
    return distinct


def _request(example: Example) -> str:
    return example.messages[-1]["content"]


def one_per_event(examples: Sequence[Example]) -> list[Example]:
    """One example per event: training on a whole log, the history is the batch itself."""
    seen: set[int] = set()
    out = []
    for example in examples:
        if example.event_id is None or example.event_id not in seen:
            out.append(example)
        if example.event_id is not None:
            seen.add(example.event_id)
    return out


def as_decisions(examples: Sequence[Example], history: Sequence[Example] = ()) -> list[Example]:
    """``examples`` with every decision's completion set to its canonical target and its
    ``choices`` to the other candidates; other examples unchanged. ``history``: the user's
    earlier examples, which count toward the label set and the option answer form."""
    everything = one_per_event([*history, *examples])
    labels = label_set([e.completion for e in everything])
    picks = [
        pick
        for e in everything
        if (listed := options(_request(e))) and (pick := chosen(listed, e.completion))
    ]
    form, notation = _user_form(picks)
    out = []
    for example in examples:
        listed = options(_request(example))
        pick = chosen(listed, example.completion) if listed else None
        if pick is not None:
            target = _in_form(pick.option, form, notation)
            others = tuple(_in_form(o, form, notation) for o in listed if o != pick.option)
            out.append(replace(example, completion=target, choices=others))
        elif labels and example.completion.strip() in labels:
            target = example.completion.strip()
            others = tuple(label for label in labels if label != target)
            out.append(replace(example, completion=target, choices=others))
        else:
            out.append(example)
    return out


__all__ = [
    "LABEL_CHARS",
    "LABEL_WORDS",
    "MIN_LABELED",
    "Option",
    "Pick",
    "as_decisions",
    "one_per_event",
    "options",
]
