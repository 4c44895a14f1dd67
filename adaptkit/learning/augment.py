"""Request word dropout: train on requests with some of their words left out.

A user's history holds a handful of requests, and the adapter soon keys each habit on
the exact wording of those few (on "Write a message", say). A later request in other
words ("Compose a text to ...") then gets whichever habit the adapter prefers, often
the wrong one ("Here are Adidas electricity bills"). Leaving out a random part of the
request at every step makes no single word decisive, so the adapter learns each habit
from all the cues in the request, the way word dropout regularises a text classifier
(Iyyer et al., 2015, "Deep Unordered Composition Rivals Syntactic Methods").

Words the answer repeats are never dropped: the answer copies them ("Here are
backpacks" for "Search the store for backpacks"), and an answer naming what its
request no longer says teaches the adapter to invent those words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

Messages = Sequence[dict[str, str]]
_NON_WORD = re.compile(r"\W+")


def _key(word: str) -> str:
    return _NON_WORD.sub("", word.lower())


@dataclass(frozen=True)
class RequestDropout:
    """Drops each word of the last user turn with probability ``rate``."""

    rate: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"word dropout rate must be in [0, 1), got {self.rate}")

    def request(self, text: str, answer: str, rng: random.Random) -> str:
        """``text`` with some words left out; words of ``answer`` and at least one word kept."""
        words = text.split()
        if self.rate == 0.0 or len(words) < 2:
            return text
        echoed = {_key(w) for w in answer.split()} - {""}
        kept = [w for w in words if _key(w) in echoed or rng.random() >= self.rate]
        return " ".join(kept) if kept else rng.choice(words)

    def messages(self, messages: Messages, answer: str, rng: random.Random) -> tuple[dict, ...]:
        """The conversation with its last user turn thinned; every other turn as it was."""
        out = [dict(m) for m in messages]
        for message in reversed(out):
            if message["role"] == "user":
                message["content"] = self.request(message["content"], answer, rng)
                break
        return tuple(out)


__all__ = ["RequestDropout"]
