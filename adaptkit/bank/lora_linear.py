"""The batched multi-adapter linear layer (Punica/S-LoRA's BGMV idea, on CPU).

Each LoRA-targetable linear of the base model (``nn.Linear``, bitsandbytes'
``Linear8bitLt`` / ``Linear4bit``, both subclasses of it, and ``adaptkit.quant``'s
``Int8Linear``) is wrapped once. The
wrapper computes the base projection once for the whole batch and adds each
row's low-rank delta:

- ``SharedDelta``: every row uses the same adapter(s): two small matmuls, with
  the adapter's own tensors (no copy: activating a user is a pointer write);
- ``RowDeltas``: rows differ: per-row A and B stacked once per batch (a gather),
  then two batched matmuls (bmm) per step.

Several adapters on one row (composition) are concatenated along the rank, with
each adapter's ``scale * weight`` carried per rank column, which is exactly the
sum of their deltas. A row with no adapter gets zero columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from adaptkit.bank.adapter import ModuleShape
from adaptkit.quant import Int8Linear


@dataclass(frozen=True)
class SharedDelta:
    A: torch.Tensor  # (rank, in)
    B: torch.Tensor  # (out, rank)
    # A float for one adapter (no tensor to build: activation stays a pointer write), else
    # (rank,): the scale * weight of the adapter each rank column belongs to.
    scale: float | torch.Tensor


@dataclass(frozen=True)
class RowDeltas:
    # Stored transposed and contiguous: bmm on CPU is several times slower on
    # transposed views than on contiguous (batch, k, n) operands.
    At: torch.Tensor  # (rows, in, rank)
    Bt: torch.Tensor  # (rows, rank, out)
    scale: torch.Tensor  # (rows, 1, rank); zero columns pad rows with a smaller total rank

    def select(self, index: torch.Tensor) -> RowDeltas:
        """Rows ``index`` of these (kept, reordered or repeated), as new contiguous tensors."""
        return RowDeltas(self.At[index], self.Bt[index], self.scale[index])


class MultiLoraLinear(nn.Module):
    """A base linear layer plus the current batch's per-row low-rank deltas."""

    def __init__(self, base: nn.Linear | Int8Linear) -> None:
        super().__init__()
        self.base = base
        self.shape = ModuleShape(base.in_features, base.out_features)
        # Set by the engine for one batch and cleared after it; None = base only.
        self.delta: SharedDelta | RowDeltas | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        delta = self.delta
        if delta is None:
            return result
        if isinstance(delta, SharedDelta):
            hidden = F.linear(x.to(delta.A.dtype), delta.A) * delta.scale
            return result + F.linear(hidden, delta.B).to(result.dtype)
        # x: (rows, tokens, in) -> (rows, tokens, rank) -> (rows, tokens, out)
        hidden = torch.bmm(x.to(delta.At.dtype), delta.At) * delta.scale
        return result + torch.bmm(hidden, delta.Bt).to(result.dtype)


def _is_adaptable(name: str, module: nn.Module, skip: frozenset[str]) -> bool:
    return isinstance(module, (nn.Linear, Int8Linear)) and name.rsplit(".", 1)[-1] not in skip


def adaptable_shapes(
    model: nn.Module, skip: frozenset[str] = frozenset({"lm_head"})
) -> dict[str, ModuleShape]:
    """The shapes of the linears ``wrap_linears`` would wrap, by PEFT module name.

    Works on a model built on the meta device (no weights read), which is how an
    export checks an adapter's module names without loading the base."""
    return {
        name: ModuleShape(module.in_features, module.out_features)
        for name, module in model.named_modules()
        if _is_adaptable(name, module, skip)
    }


def wrap_linears(
    model: nn.Module, skip: frozenset[str] = frozenset({"lm_head"})
) -> dict[str, MultiLoraLinear]:
    """Replace every adaptable linear in ``model`` by a MultiLoraLinear (in place).

    Returns the wrappers by module name, the names PEFT uses in its keys
    (``model.layers.0.self_attn.q_proj``). ``unwrap_linears`` undoes it.
    """
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if _is_adaptable(name, module, skip)
    ]
    wrappers: dict[str, MultiLoraLinear] = {}
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = MultiLoraLinear(module)
        setattr(parent, child, wrapper)
        wrappers[name] = wrapper
    return wrappers


def unwrap_linears(model: nn.Module, wrappers: dict[str, MultiLoraLinear]) -> None:
    for name, wrapper in wrappers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, wrapper.base)
        wrapper.delta = None
