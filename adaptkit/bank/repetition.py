"""Repetition control: what ``transformers.generate`` and OpenAI's API offer against loops.

A small model decoding greedily can fall into a loop ("no, no, no, ..."): once a token
repeats, repeating it again is the likeliest continuation. Each row of a batch may
carry its own ``Repetition`` settings, applied to its next-token logits in the order
``transformers`` runs its processors (vLLM's frequency and presence right after the
repetition penalty, as vLLM applies them):

1. ``repetition_penalty`` (CTRL; HF's ``RepetitionPenaltyLogitsProcessor``): every token
   of the row's prompt and answer so far gets logit / penalty if positive, logit *
   penalty if negative.
2. ``frequency_penalty``, ``presence_penalty`` (OpenAI, vLLM): logit -= frequency *
   count + presence * (count > 0), counting the answer's tokens only.
3. ``no_repeat_ngram_size`` (fairseq; HF's ``NoRepeatNGramLogitsProcessor``): a token
   that would complete an n-gram already in the row's prompt + answer is banned.

``RepetitionState`` holds every batch row's settings and token history (its prompt,
never padding, then its answer) in a few tensors, so one step costs a handful of
batched tensor operations whatever the batch mixes; rows leave (``select``) and join
(``join``) with their history.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from adaptkit.errors import InputError


@dataclass(frozen=True)
class Repetition:
    """One row's repetition control; the defaults change nothing. Field names are the
    CLI flags (``--repetition-penalty``) and the server's request fields."""

    repetition_penalty: float = field(
        default=1.0,
        metadata={"help": "tokens already in the prompt or answer: logit / this if positive, "
                  "* this if negative (HF's; 1: off)"},
    )  # fmt: skip
    no_repeat_ngram_size: int = field(
        default=0,
        metadata={"help": "ban a token that would repeat an n-gram of the prompt or answer "
                  "(HF's; 0: off)"},
    )  # fmt: skip
    frequency_penalty: float = field(
        default=0.0,
        metadata={"help": "logit -= this * times the token is in the answer (OpenAI's; 0: off)"},
    )
    presence_penalty: float = field(
        default=0.0,
        metadata={"help": "logit -= this if the token is in the answer (OpenAI's; 0: off)"},
    )

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            problems.append(
                f"repetition_penalty must be a positive number (1: off), got "
                f"{self.repetition_penalty!r}"
            )
        if not isinstance(self.no_repeat_ngram_size, int) or self.no_repeat_ngram_size < 0:
            problems.append(
                f"no_repeat_ngram_size must be an integer >= 0 (0: off), got "
                f"{self.no_repeat_ngram_size!r}"
            )
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -2.0 <= value <= 2.0):
                problems.append(f"{name} must be in [-2, 2] (0: off), got {value!r}")
        if problems:
            raise InputError("; ".join(problems))

    @property
    def active(self) -> bool:
        return self != Repetition()


class RepetitionState:
    """The settings and token history of every row of a decoding batch.

    ``ids`` (rows, width) holds each row's prompt then answer tokens, right-aligned;
    -1 fills the left of shorter rows (never a token). ``answered``: how many of a
    row's last tokens are its answer.
    """

    def __init__(self, prompts: Sequence[Sequence[int]], settings: Sequence[Repetition]) -> None:
        if len(prompts) != len(settings):
            raise ValueError(f"{len(prompts)} prompts but {len(settings)} settings")
        width = max((len(p) for p in prompts), default=0)
        self.ids = torch.full((len(prompts), width), -1, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            if prompt:
                self.ids[row, width - len(prompt) :] = torch.tensor(prompt)
        self.answered = torch.zeros(len(prompts), dtype=torch.long)
        self.penalty = torch.tensor([s.repetition_penalty for s in settings], dtype=torch.float)
        self.frequency = torch.tensor([s.frequency_penalty for s in settings], dtype=torch.float)
        self.presence = torch.tensor([s.presence_penalty for s in settings], dtype=torch.float)
        self.ngram = torch.tensor([s.no_repeat_ngram_size for s in settings], dtype=torch.long)
        self._refresh()

    def _refresh(self) -> None:
        """Which controls some row uses: the others cost nothing."""
        self.uses_penalty = bool((self.penalty != 1.0).any())
        self.uses_counts = bool((self.frequency != 0).any() or (self.presence != 0).any())
        self.ngram_sizes = sorted(set(self.ngram.tolist()) - {0})
        self.active = self.uses_penalty or self.uses_counts or bool(self.ngram_sizes)

    # -- the batch changes ----------------------------------------------------------------

    def append(self, token: torch.Tensor) -> None:
        """Every row's newly chosen token (one per row, in batch order)."""
        self.ids = torch.cat([self.ids, token.to(torch.long)[:, None]], dim=1)
        self.answered += 1

    def select(self, index: torch.Tensor) -> None:
        """Keep (or repeat) the rows ``index`` names, in that order."""
        self.ids = self.ids[index]
        self.answered = self.answered[index]
        self.penalty = self.penalty[index]
        self.frequency = self.frequency[index]
        self.presence = self.presence[index]
        self.ngram = self.ngram[index]
        if self.ids.shape[0]:  # drop the leading columns no row uses any more
            first = int((self.ids >= 0).any(dim=0).int().argmax())
            self.ids = self.ids[:, first:]
        self._refresh()

    def join(self, other: RepetitionState) -> None:
        """Append ``other``'s rows after this batch's."""
        width = max(self.ids.shape[1], other.ids.shape[1])
        self.ids = torch.cat(
            [
                F.pad(self.ids, (width - self.ids.shape[1], 0), value=-1),
                F.pad(other.ids, (width - other.ids.shape[1], 0), value=-1),
            ]
        )
        for name in ("answered", "penalty", "frequency", "presence", "ngram"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))
        self._refresh()

    # -- the logits -----------------------------------------------------------------------

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (rows, vocab) with every row's controls applied (a new tensor, in
        float32 as ``transformers.generate`` processes them); the same tensor when no
        row uses any."""
        if not self.active:
            return logits
        logits = logits.float()
        vocab = logits.shape[-1]
        # Column ``vocab`` is a spare one: filler (-1) and ids past the logits land there.
        ids = torch.where(self.ids < 0, vocab, self.ids.clamp(max=vocab))
        if self.uses_penalty:
            seen = torch.zeros(len(ids), vocab + 1, dtype=torch.bool).scatter_(1, ids, True)
            penalty = self.penalty[:, None]
            penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
            logits = torch.where(seen[:, :vocab], penalized, logits)
        if self.uses_counts:
            width = ids.shape[1]
            answer = torch.arange(width)[None, :] >= width - self.answered[:, None]
            counts = torch.zeros(len(ids), vocab + 1).scatter_add_(
                1, torch.where(answer, ids, vocab), torch.ones(ids.shape)
            )[:, :vocab]
            logits = logits - self.frequency[:, None] * counts
            logits = logits - self.presence[:, None] * (counts > 0)
        for size in self.ngram_sizes:
            logits = self._ban_ngrams(logits, size)
        return logits

    def _ban_ngrams(self, logits: torch.Tensor, size: int) -> torch.Tensor:
        """-inf for each token that would complete an n-gram (n = ``size``) already in its
        row, for the rows using that size. An n-gram can only be completed by the next
        token if it starts with the row's last n - 1 tokens: that suffix is matched
        against every window of the row (HF's way), and a match bans the window's last
        token."""
        rows = (self.ngram == size).nonzero().flatten()
        ids = self.ids[rows]
        width = ids.shape[1]
        if width < size:
            return logits
        vocab = logits.shape[-1]
        suffix = ids[:, width + 1 - size :]
        windows = ids.unfold(1, size, 1)
        matches = (windows[..., :-1] == suffix[:, None]).all(dim=-1)
        # A row shorter than n has no n-gram; a window holding filler is no n-gram either.
        matches &= (windows >= 0).all(dim=-1) & ((ids >= 0).sum(dim=1) >= size)[:, None]
        last = torch.where(matches, windows[..., -1].clamp(max=vocab), vocab)
        banned = torch.zeros(len(rows), vocab + 1, dtype=torch.bool).scatter_(1, last, True)
        logits = logits.clone()
        logits[rows] = logits[rows].masked_fill(banned[:, :vocab], float("-inf"))
        return logits


__all__ = ["Repetition", "RepetitionState"]
