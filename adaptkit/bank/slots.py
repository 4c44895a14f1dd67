"""Fixed row slots: the per-row adapter tensors of a batch whose rows join and leave.

A ``DecodeSession`` (continuous batching) admits rows between decode steps and drops the
rows that ended. Re-stacking every row's A and B whenever one row joins, and gathering
them again whenever one leaves, copies the whole batch's adapters each time (32
all-linear rank-8 rows of SmolLM2-135M: about 300 MB), where a batch computed at once
stacks them once.

Here each layer keeps buffers sized for ``capacity`` rows, and row i of the batch is
slot i: a joining row writes only its own slot; a leaving row's slot is taken by the
batch's last row (that row's copy, nothing else). The layers compute on views of slots
``[start, stop)``: contiguous, so ``bmm`` runs as it does on a stacked batch, and the
new rows' prefill computes on a view of just their slots. Buffers grow (more rows, a
higher total rank) by doubling; they are kept while the batch is empty, for the next
rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from adaptkit.bank.adapter import LoraWeights, RowAdapters
from adaptkit.bank.lora_linear import MultiLoraLinear, RowDeltas


def write_row(deltas: RowDeltas, row: int, pieces: Sequence[tuple[LoraWeights, float]]) -> None:
    """Make ``row`` of ``deltas`` compute one module's ``pieces`` (its adapters and their
    weights), concatenated along the rank, each with its ``scale * weight``; the row's
    other rank columns get scale 0, so they add exactly nothing."""
    offset = 0
    for lora, weight in pieces:
        end = offset + lora.rank
        deltas.At[row, :, offset:end] = lora.A.T
        deltas.Bt[row, offset:end] = lora.B.T
        deltas.scale[row, 0, offset:end] = lora.scale * weight
        offset = end
    deltas.scale[row, 0, offset:] = 0.0


def compaction(rows: int, keep: Sequence[int]) -> list[int]:
    """The batch's new order when only the rows ``keep`` stay: entry i is the old row now
    at i. Rows below the new size stay where they are; each place a leaver frees there
    goes to a staying row from the end, so at most one row moves per leaver."""
    staying = set(keep)
    size = len(staying)
    holes = [i for i in range(size) if i not in staying]
    movers = [i for i in range(size, rows) if i in staying]
    order = list(range(size))
    for hole, mover in zip(holes, movers, strict=True):
        order[hole] = mover
    return order


class RowSlots:
    """The adapters of a continuous batch's rows, one slot per row, for every layer."""

    def __init__(self, wrappers: Mapping[str, MultiLoraLinear], capacity: int = 8) -> None:
        self.wrappers = wrappers
        self.capacity = capacity
        self.rows = 0
        # Per layer, allocated when a row first has an adapter there: the buffers, and
        # whether each slot has an adapter on that layer (a layer no row uses is skipped).
        self._buffers: dict[str, RowDeltas] = {}
        self._holds: dict[str, list[bool]] = {name: [] for name in wrappers}

    # The buffers are inference tensors (made under inference mode): every write is too.
    @torch.inference_mode()
    def append(self, rows: Sequence[RowAdapters]) -> None:
        """Put ``rows`` in the slots after the current rows (their order kept)."""
        start, stop = self.rows, self.rows + len(rows)
        while self.capacity < stop:
            self.capacity *= 2
        for name, wrapper in self.wrappers.items():
            pieces = [[(a.modules[name], w) for a, w in row if name in a.modules] for row in rows]
            rank = max((sum(p.rank for p, _ in row) for row in pieces), default=0)
            deltas = self._buffers.get(name)
            have = 0 if deltas is None else deltas.At.shape[2]
            # More rank, or more rows than the buffers hold (rows without this layer too).
            if rank > have or (deltas is not None and len(deltas.At) < stop):
                deltas = self._buffers[name] = self._grown(wrapper, deltas, rank)
            holds = self._holds[name]
            del holds[start:]
            for offset, row in enumerate(pieces):
                holds.append(bool(row))
                if deltas is not None:
                    write_row(deltas, start + offset, row)
        self.rows = stop

    def point(self, start: int, stop: int) -> None:
        """Make the next forward's row i use slot ``start + i``, for slots ``[start, stop)``."""
        for name, wrapper in self.wrappers.items():
            deltas = self._buffers.get(name)
            if deltas is None or not any(self._holds[name][start:stop]):
                wrapper.delta = None
            else:
                wrapper.delta = RowDeltas(
                    deltas.At[start:stop], deltas.Bt[start:stop], deltas.scale[start:stop]
                )

    @torch.inference_mode()
    def compact(self, order: Sequence[int]) -> None:
        """Keep the rows ``order`` names (``compaction``'s order: each entry is its own
        index or a row beyond the new size), copying only the rows that move."""
        size = len(order)
        moves = [(to, source) for to, source in enumerate(order) if source != to]
        if any(source < size or source >= self.rows for _, source in moves):
            raise ValueError(
                f"compact: {list(order)} moves a row within the kept {size} or from "
                f"beyond the {self.rows} rows; build the order with compaction()"
            )
        for name, deltas in self._buffers.items():
            holds = self._holds[name]
            for to, source in moves:
                holds[to] = holds[source]
                if holds[to]:
                    deltas.At[to] = deltas.At[source]
                    deltas.Bt[to] = deltas.Bt[source]
                deltas.scale[to] = deltas.scale[source]
        for holds in self._holds.values():
            del holds[size:]
        self.rows = size

    def clear(self) -> None:
        """No rows (the buffers stay, for the next ones); the layers compute the base."""
        self.compact([])
        for wrapper in self.wrappers.values():
            wrapper.delta = None

    def _grown(self, wrapper: MultiLoraLinear, deltas: RowDeltas | None, rank: int) -> RowDeltas:
        """Zeroed buffers for ``capacity`` rows of at least ``rank``, holding the current
        rows' tensors (zero columns pad the ranks they had)."""
        if deltas is not None:
            rank = max(rank, deltas.At.shape[2])
        shape = wrapper.shape
        grown = RowDeltas(
            torch.zeros(self.capacity, shape.in_features, rank),
            torch.zeros(self.capacity, rank, shape.out_features),
            torch.zeros(self.capacity, 1, rank),
        )
        if deltas is not None:
            old = deltas.At.shape[2]
            grown.At[: self.rows, :, :old] = deltas.At[: self.rows]
            grown.Bt[: self.rows, :old] = deltas.Bt[: self.rows]
            grown.scale[: self.rows, :, :old] = deltas.scale[: self.rows]
        return grown
