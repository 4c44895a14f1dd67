"""Training rows as tensors: (prompt, completion) pairs, right-padded, loss on the completion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from adaptkit.prompting import encode_example, pad_token_id

IGNORE = -100  # the label of a position no loss applies to (prompt, padding)


@dataclass
class Encoded:
    input_ids: Tensor
    labels: Tensor
    attention_mask: Tensor


def collate(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> Encoded:
    """Right-pad (input_ids, labels) pairs into one batch."""
    width = max(len(ids) for ids, _ in pairs)
    return Encoded(
        input_ids=torch.tensor([[*ids] + [pad_id] * (width - len(ids)) for ids, _ in pairs]),
        labels=torch.tensor([[*labels] + [IGNORE] * (width - len(labels)) for _, labels in pairs]),
        attention_mask=torch.tensor(
            [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in pairs]
        ),
    )


def encode_rows(
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[tuple[Sequence[dict], str]],
    max_length: int,
) -> Encoded:
    """(conversation, completion) rows as one batch, loss on the completion tokens only."""
    pairs = [encode_example(tokenizer, list(m), completion, max_length) for m, completion in rows]
    return collate(pairs, pad_token_id(tokenizer))


__all__ = ["IGNORE", "Encoded", "collate", "encode_rows"]
