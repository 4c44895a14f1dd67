"""Fold an adapter into the base weights for a long single-user stream, and unfold exactly.

Folding computes ``W + sum(weight * scale * B @ A)`` into a NEW tensor and
points the layer at it; the original parameter object is kept aside. Unfolding
points the layer back at the original: the weights are bitwise what they were
(no ``W + d - d`` rounding), at the price of one extra copy of the targeted
weights while merged.

A quantized base (int8, nf4) is never merged: adding a delta means
dequantizing, adding and requantizing, which changes the base weights for
every other user and cannot be undone exactly. ``merge_refusal`` says so, the
router keeps such plans on the unmerged path, and the plan carries the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from adaptkit.bank.adapter import AdapterWeights
from adaptkit.bank.lora_linear import MultiLoraLinear
from adaptkit.errors import InputError


def merge_refusal(quant: str) -> str | None:
    """Why a base loaded with ``quant`` cannot be merged into, or None if it can."""
    if quant == "none":
        return None
    return (
        f"the base is {quant}-quantized: folding the delta in would requantize the shared "
        "weights and could not be undone exactly, so the adapter runs unmerged"
    )


@dataclass
class Folded:
    """What ``unfold`` needs: each touched layer's original weight parameter."""

    originals: dict[str, nn.Parameter]


@torch.no_grad()
def fold(
    wrappers: Mapping[str, MultiLoraLinear],
    adapters: Sequence[tuple[AdapterWeights, float]],
) -> Folded:
    originals: dict[str, nn.Parameter] = {}
    try:
        for name, wrapper in wrappers.items():
            pieces = [(a.modules[name], w) for a, w in adapters if name in a.modules]
            if not pieces:
                continue
            original = wrapper.base.weight
            if original.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                raise InputError(f"cannot merge into {name}: its weight is {original.dtype}")
            merged = original.detach().clone()
            for lora, weight in pieces:
                merged += (lora.B @ lora.A) * (lora.scale * weight)
            originals[name] = original
            wrapper.base.weight = nn.Parameter(merged, requires_grad=False)
    except BaseException:
        unfold(wrappers, Folded(originals))
        raise
    return Folded(originals)


def unfold(wrappers: Mapping[str, MultiLoraLinear], folded: Folded) -> None:
    for name, original in folded.originals.items():
        wrappers[name].base.weight = original
    folded.originals.clear()
