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

Its **target** is the decision in a canonical short form, and its **candidates** the
decisions it was made against:

- a label: the answer itself, stripped (the user's own form: "[3]", "4", "positive");
  the candidates are the user's other labels;
- an option: the marker alone when every option answer of the user is a bare marker
  (the user answers "B": a check then wants the marker), else the option's text as
  listed ("Falafel wrap"); the candidates are the other options in the same form.
  Text, not "B. Falafel wrap": with the marker first the decision rests on one letter
  token, and an adapter trained on a few choices learns which letter the user picked
  most (measured on the development suite: "B." for every request), not what.

The update rules then put the loss on the target alone, plus a choice term: the target
against the candidates, a cross-entropy over their summed log-probabilities
(``losses.choice_loss``). Word dropout leaves a decision's request whole: it keeps the
words the answer repeats, which for an option would be the chosen option's words only.
"""

from __future__ import annotations

import math
import re
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


def chosen(listed: Sequence[Option], answer: str) -> tuple[Option, bool] | None:
    """(the option ``answer`` names, whether it is the bare marker), or None."""
    by_marker = {o.marker: o for o in listed}
    if bare := _BARE.match(answer.strip()):
        marker = next(g for g in bare.groups() if g).upper()
        return (by_marker[marker], True) if marker in by_marker else None
    named = [o for o in listed if _fold(o.text) in _fold(answer)]
    return (named[0], False) if len(named) == 1 else None


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
    bare_markers = bool(picks) and all(bare for _, bare in picks)
    out = []
    for example in examples:
        listed = options(_request(example))
        pick = chosen(listed, example.completion) if listed else None
        if pick is not None:
            form = (lambda o: o.marker) if bare_markers else (lambda o: o.text)
            target = form(pick[0])
            others = tuple(form(o) for o in listed if o != pick[0])
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
    "as_decisions",
    "one_per_event",
    "options",
]
