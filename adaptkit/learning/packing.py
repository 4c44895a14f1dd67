"""Pack a batch of rows into one sequence, computing every shared prefix once.

The rows an update scores share a lot: every SmolLM2 chat row opens with the same
22-token system prompt (a third of a typical 65-token training row), a DPO pair
repeats its prompt, and word-dropout views of one request often coincide. Padded
to a rectangle, a batch of 4 history rows and 4 shorter anchor rows also spends
a quarter of its positions on padding.

A decoder's state at position t depends only on tokens 0..t, so two rows that
agree on their first t + 1 tokens have the same states there. ``pack`` puts the
rows in a token trie: each distinct prefix gets one slot of a packed sequence,
each slot attends to its own ancestors (a 4-D mask) at its position in its row
(explicit position ids, so rotary embeddings are the row's own). Running the
layers once over the packed sequence gives every row's states -- the same math
as the padded batch, on the distinct tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Packing:
    """Where each row's tokens live in one packed sequence."""

    token_ids: Tensor  # (L,) the token of each slot
    positions: Tensor  # (L,) each slot's position in its row(s)
    slots: list[Tensor]  # per row: (len_i,) the slot of each of its positions
    allowed: Tensor  # (L, L) bool: slot q may attend to slot k

    @property
    def length(self) -> int:
        return int(self.token_ids.shape[0])

    def additive_mask(self, dtype: torch.dtype) -> Tensor:
        """(1, 1, L, L) mask in the form attention adds to its scores (eager and sdpa)."""
        mask = torch.zeros(self.allowed.shape, dtype=dtype)
        mask.masked_fill_(~self.allowed, torch.finfo(dtype).min)
        return mask[None, None]


def pack(rows: Sequence[Sequence[int]]) -> Packing:
    """One slot per distinct prefix of ``rows`` (token id lists, unpadded, non-empty)."""
    trie: dict[tuple[int, int], int] = {}  # (parent slot or -1, token) -> slot
    tokens: list[int] = []
    positions: list[int] = []
    slots: list[Tensor] = []
    for row in rows:
        if not row:
            raise ValueError("cannot pack an empty row")
        parent, mine = -1, []
        for position, token in enumerate(row):
            key = (parent, int(token))
            slot = trie.get(key)
            if slot is None:
                slot = trie[key] = len(tokens)
                tokens.append(int(token))
                positions.append(position)
            mine.append(slot)
            parent = slot
        slots.append(torch.tensor(mine))
    allowed = torch.zeros(len(tokens), len(tokens), dtype=torch.bool)
    for mine in slots:
        # A row's slots see their row's earlier slots. Shared slots get the same
        # pattern from every row through them: their ancestors are the same.
        causal = torch.ones(len(mine), len(mine), dtype=torch.bool).tril()
        allowed[mine[:, None], mine[None, :]] |= causal
    return Packing(torch.tensor(tokens), torch.tensor(positions), slots, allowed)


def groups(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Consecutive rows in groups of at most ``max_tokens`` tokens (before sharing).

    Attention over a packed sequence costs L^2; past a thousand or so tokens it
    would eat what sharing saves, so large batches are packed in pieces.
    """
    result: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index, length in enumerate(lengths):
        if current and total + length > max_tokens:
            result.append(current)
            current, total = [], 0
        current.append(index)
        total += length
    if current:
        result.append(current)
    return result


__all__ = ["Packing", "groups", "pack"]
