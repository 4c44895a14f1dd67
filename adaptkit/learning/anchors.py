"""Anchors: general prompts, the base model's answers to them and its next-token
distributions over those answers. Every update step puts a few of them under
KL(base || adapter), so what the adapter learns about a user does not spill into
answers no habit applies to.

``BaseCaches`` keeps, per loaded base, what never changes while that base is loaded:
its anchor sets and the frozen bottom layers' states per row (``scoring``). Whoever
owns a base model owns its ``BaseCaches``; many adapters trained one after the other
on that base share them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from adaptkit.learning.encoding import encode_rows
from adaptkit.learning.scoring import BottomCache
from adaptkit.learning.slot import AdapterSlot
from adaptkit.prompting import as_messages, generate

# The KL anchor's defaults (online updates and ``adaptkit train --kl-anchor`` alike):
# anchor rows per step, the weight of their KL term, and the length of the base's
# answers they are scored on.
ANCHOR_ROWS_PER_STEP = 4
KL_WEIGHT = 10.0
ANCHOR_TOKENS = 12

# General prompts, unlike the gate's probes (which measure forgetting and must not be
# what the trainer was anchored to).
ANCHOR_PROMPTS: tuple[str, ...] = (
    "Write one sentence about the ocean.",
    "What is a noun?",
    "Give me a synonym for happy.",
    "Name three fruits.",
    "What is the capital of Canada?",
    "Explain what rain is in one sentence.",
    "How many minutes are in an hour?",
    "Say hello in French.",
    "What is the capital of India?",
    "What is the capital of Norway?",
    "How many legs does a dog have?",
    "What color is snow?",
    "Who wrote Hamlet?",
    "What language is spoken in Italy?",
    "What is the largest desert in the world?",
    "What is 5 + 3?",
    "What is the opposite of fast?",
    "Which planet is known as the red planet?",
    "What do cows drink?",
    "Name a musical instrument with strings.",
    "What is the chemical symbol for iron?",
    "How many days are in a year?",
    "Describe a cat in one sentence.",
    "What is photosynthesis?",
)


@dataclass
class AnchorSet:
    """General prompts with the base model's answers and next-token log-probs."""

    rows: list[tuple[tuple[dict, ...], str]]
    reference: list[Tensor]  # per row: (answer tokens, vocab) log-probs of the base

    @classmethod
    @torch.no_grad()
    def build(
        cls, slot: AdapterSlot, prompts: Sequence[str], max_length: int, answer_tokens: int = 32
    ) -> AnchorSet:
        if not prompts:
            return cls([], [])
        tokenizer = slot.base.tokenizer
        conversations = [as_messages(p) for p in prompts]
        with slot.model.disable_adapter():
            answers = generate(slot.model, tokenizer, conversations, max_new_tokens=answer_tokens)
        rows = [(tuple(c), a) for c, a in zip(conversations, answers, strict=True) if a.strip()]
        scored = slot.scored(encode_rows(tokenizer, rows, max_length), adapter=False)
        logps = torch.log_softmax(scored.logits.float(), dim=-1)
        return cls(rows, [logps[scored.rows == i] for i in range(len(rows))])


@dataclass
class BaseCaches:
    """What the adapters trained on one loaded base share: anchor sets, bottom states."""

    bottoms: BottomCache = field(default_factory=OrderedDict)
    _anchor_sets: dict[tuple[tuple[str, ...], int, int], AnchorSet] = field(default_factory=dict)

    def anchors(
        self,
        slot: AdapterSlot,
        prompts: Sequence[str] = ANCHOR_PROMPTS,
        *,
        max_length: int,
        answer_tokens: int,
    ) -> AnchorSet:
        """The anchor set of ``prompts`` on the slot's base, built on first use."""
        key = (tuple(prompts), max_length, answer_tokens)
        if key not in self._anchor_sets:
            self._anchor_sets[key] = AnchorSet.build(slot, prompts, max_length, answer_tokens)
        return self._anchor_sets[key]


__all__ = [
    "ANCHOR_PROMPTS",
    "ANCHOR_ROWS_PER_STEP",
    "ANCHOR_TOKENS",
    "KL_WEIGHT",
    "AnchorSet",
    "BaseCaches",
]
