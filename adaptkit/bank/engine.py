"""``Engine``: many users, one base model, one batched generation.

    engine = Engine.open(home="~/.adaptkit")
    results = engine.generate([Request("How far is the zoo?", user="alice"),
                               Request("What should I cook?", user="bob")])

Per call: plan every request (router), load every adapter the plans name (bank:
RAM hit or cold load from the registry's blobs), and only then compute. A bad
row (unknown user or shared adapter, incompatible adapter, non-finite weight)
is an error naming it before any compute; with ``errors="return"`` the other
rows are computed exactly as planned and the bad row carries its error.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from adaptkit.bank.adapter import AdapterWeights
from adaptkit.bank.lora_linear import (
    MultiLoraLinear,
    RowDeltas,
    SharedDelta,
    unwrap_linears,
    wrap_linears,
)
from adaptkit.bank.merge import fold, merge_refusal, unfold
from adaptkit.bank.store import DEFAULT_CACHE_BYTES, AdapterBank
from adaptkit.base_model import CATALOGUE, DEFAULT_BASE, BaseModel, load_base
from adaptkit.errors import AdaptkitError, InputError
from adaptkit.home import Home
from adaptkit.prompting import as_messages, encode_prompt, left_pad, pad_token_id, stop_token_ids
from adaptkit.registry import Registry
from adaptkit.router import Plan, PlannedAdapter, Request, Router, RoutingPolicy
from adaptkit.router.router import first_error, row_error

DEFAULT_SHARED_DIR = Path("adapters/shared")
RowAdapters = Sequence[tuple[AdapterWeights, float]]  # one row's adapters and their weights


@dataclass(frozen=True)
class Result:
    """One request's answer, the plan that produced it, or the error that stopped it."""

    text: str | None
    plan: Plan | None
    tokens: list[int] = field(default_factory=list)
    error: AdaptkitError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _base_aliases(base: BaseModel) -> set[str]:
    aliases = {base.name, str(getattr(base.model.config, "_name_or_path", "") or "")}
    if base.path is not None:
        aliases |= {str(base.path), str(Path(base.path).resolve()), Path(base.path).name}
    if base.name in CATALOGUE:
        aliases.add(CATALOGUE[base.name].hf_id)
    return aliases


class Engine:
    """Serves a batch of requests of different users in one forward per generated token.

    The engine takes over ``base.model`` while open (its linear layers are wrapped);
    ``close()`` (or ``with Engine(...)``) gives it back unchanged. One ``generate`` at a
    time: the layers hold the current batch's adapters, so calls must not overlap
    (serve concurrent requests by batching them into one call).
    """

    def __init__(
        self,
        base: BaseModel,
        registry: Registry,
        *,
        shared_dir: str | os.PathLike[str] = DEFAULT_SHARED_DIR,
        policy: RoutingPolicy | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        verify_sha256: bool = True,
    ) -> None:
        self.base = base
        self.wrappers: dict[str, MultiLoraLinear] = wrap_linears(base.model)
        self.bank = AdapterBank(
            registry,
            base_name=base.name,
            base_aliases=_base_aliases(base),
            shapes={name: w.shape for name, w in self.wrappers.items()},
            shared_dir=Path(shared_dir),
            cache_bytes=cache_bytes,
            verify_sha256=verify_sha256,
        )
        try:
            self.router = Router(self.bank, policy, merge_refusal=merge_refusal(base.quant))
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        base: str = DEFAULT_BASE,
        quant: str = "none",
        **options,
    ) -> Engine:
        """An engine over the home's registry and a freshly loaded base model."""
        resolved = Home.resolve(home).ensure()
        registry = Registry(resolved.registry_url, resolved.adapters_dir)
        return cls(load_base(base, home=resolved, quant=quant), registry, **options)

    def close(self) -> None:
        unwrap_linears(self.base.model, self.wrappers)
        self.wrappers = {}

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- activation: point each layer at this batch's adapters -------------------------

    def set_rows(self, rows: Sequence[RowAdapters]) -> None:
        """Make row i of the next forward use ``rows[i]`` (empty: the base model alone).

        When every row has the same adapters the layers point at the cached tensors
        themselves (no copy); otherwise each layer stacks its rows' A and B once.
        """
        first = [(id(a), w) for a, w in rows[0]]
        uniform = all([(id(a), w) for a, w in row] == first for row in rows[1:])
        for name, wrapper in self.wrappers.items():
            if uniform:
                wrapper.delta = _shared_delta(name, rows[0])
            else:
                wrapper.delta = _row_deltas(name, rows, wrapper)

    def clear_rows(self) -> None:
        for wrapper in self.wrappers.values():
            wrapper.delta = None

    @contextmanager
    def merged(self, adapters: RowAdapters):
        """Fold ``adapters`` into the base weights for the block; unfold exactly after."""
        refusal = merge_refusal(self.base.quant)
        if refusal is not None:
            raise InputError(f"cannot merge: {refusal}")
        self.clear_rows()
        folded = fold(self.wrappers, adapters)
        try:
            yield
        finally:
            unfold(self.wrappers, folded)

    # -- the public call ----------------------------------------------------------------

    def generate(
        self,
        requests: Sequence[Request],
        *,
        max_new_tokens: int = 64,
        min_new_tokens: int = 0,
        errors: Literal["raise", "return"] = "raise",
    ) -> list[Result]:
        """Greedy answers for requests of any users, in one batch, each with its plan."""
        if errors not in ("raise", "return"):
            raise InputError(f"errors={errors!r}: choose 'raise' or 'return'")
        if not requests:
            return []
        plans = self.router.plan_batch(requests, max_new_tokens=max_new_tokens)
        if errors == "raise" and (error := first_error(plans)) is not None:
            raise error
        pinned: list[Hashable] = []
        try:
            rows: list[RowAdapters | AdaptkitError] = []
            for index, plan in enumerate(plans):
                if not isinstance(plan, Plan):
                    rows.append(plan)
                    continue
                try:
                    rows.append(self._load(plan, pinned))
                except AdaptkitError as error:
                    rows.append(row_error(error, index, requests[index]))
            if errors == "raise" and (error := first_error(rows)) is not None:
                raise error
            # Every input is valid from here on: compute.
            live = [i for i, row in enumerate(rows) if not isinstance(row, AdaptkitError)]
            outputs = self._compute(
                [requests[i] for i in live],
                [rows[i] for i in live],
                merge=bool(live) and plans[live[0]].kind == "merged",
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
            )
        finally:
            for key in pinned:
                self.bank.cache.unpin(key)
        results: list[Result] = [
            Result(None, None, error=row) if isinstance(row, AdaptkitError) else None
            for row in rows
        ]
        for i, (tokens, text) in zip(live, outputs, strict=True):
            results[i] = Result(text, plans[i], tokens)
        return results

    def _load(self, plan: Plan, pinned: list[Hashable]) -> list[tuple[AdapterWeights, float]]:
        """The plan's adapters, loaded and pinned for the duration of the batch."""
        loaded = []
        for planned in plan.adapters:
            key, adapter = self._acquire(planned)
            self.bank.cache.pin(key)
            pinned.append(key)
            loaded.append((adapter, planned.weight))
        return loaded

    def _acquire(self, planned: PlannedAdapter) -> tuple[Hashable, AdapterWeights]:
        if planned.source == "user":
            version = planned.version_info or self.bank.active_version(planned.name)
            adapter = self.bank.load_user(version)
            return self.bank.user_key(version), adapter
        adapter = self.bank.load_shared(planned.name)
        return self.bank.shared_key(planned.name), adapter

    @torch.inference_mode()
    def _compute(
        self,
        requests: Sequence[Request],
        rows: Sequence[RowAdapters],
        *,
        merge: bool,
        max_new_tokens: int,
        min_new_tokens: int,
    ) -> list[tuple[list[int], str]]:
        if not requests:
            return []
        if merge:
            with self.merged(rows[0]):
                return self._generate(requests, max_new_tokens, min_new_tokens)
        self.set_rows(rows)
        try:
            return self._generate(requests, max_new_tokens, min_new_tokens)
        finally:
            self.clear_rows()

    def _generate(
        self, requests: Sequence[Request], max_new_tokens: int, min_new_tokens: int
    ) -> list[tuple[list[int], str]]:
        """Left-padded greedy decoding, as ``adaptkit.prompting.generate`` does it."""
        tokenizer = self.base.tokenizer
        prompts = [encode_prompt(tokenizer, as_messages(r.prompt)) for r in requests]
        pad_id = pad_token_id(tokenizer)
        input_ids, attention_mask = left_pad(prompts, pad_id)
        width = input_ids.shape[1]
        stops = stop_token_ids(tokenizer)
        output = self.base.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=pad_id,
        )
        answers = []
        for row in output[:, width:].tolist():
            # Everything up to and including the first stop token is the row's answer.
            end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            answers.append(
                (row[:end], tokenizer.decode(row[:end], skip_special_tokens=True).strip())
            )
        return answers


def _shared_delta(name: str, adapters: RowAdapters) -> SharedDelta | None:
    pieces = [(a.modules[name], w) for a, w in adapters if name in a.modules]
    if not pieces:
        return None
    if len(pieces) == 1:
        lora, weight = pieces[0]
        return SharedDelta(lora.A, lora.B, lora.scale * weight)  # pointers, no copy
    return SharedDelta(
        torch.cat([p.A for p, _ in pieces]),
        torch.cat([p.B for p, _ in pieces], dim=1),
        torch.cat([torch.full((p.rank,), p.scale * w) for p, w in pieces]),
    )


def _row_deltas(
    name: str, rows: Sequence[RowAdapters], wrapper: MultiLoraLinear
) -> RowDeltas | None:
    per_row = [[(a.modules[name], w) for a, w in row if name in a.modules] for row in rows]
    rank = max(sum(p.rank for p, _ in pieces) for pieces in per_row)
    if rank == 0:
        return None
    shape = wrapper.shape
    if all(len(pieces) <= 1 for pieces in per_row) and all(
        pieces[0][0].rank == rank for pieces in per_row if pieces
    ):
        # The common case, one adapter (or none) per row: one stacking copy per tensor.
        zero_A, zero_B = torch.zeros(rank, shape.in_features), torch.zeros(shape.out_features, rank)
        As = [pieces[0][0].A if pieces else zero_A for pieces in per_row]
        Bs = [pieces[0][0].B if pieces else zero_B for pieces in per_row]
        scales = [pieces[0][0].scale * pieces[0][1] if pieces else 0.0 for pieces in per_row]
        At = torch.stack([A.T for A in As])
        Bt = torch.stack([B.T for B in Bs])
        scale = torch.tensor(scales).view(-1, 1, 1).expand(-1, 1, rank).contiguous()
        return RowDeltas(At, Bt, scale)
    At = torch.zeros(len(rows), shape.in_features, rank)
    Bt = torch.zeros(len(rows), rank, shape.out_features)
    scale = torch.zeros(len(rows), 1, rank)
    for i, pieces in enumerate(per_row):
        offset = 0
        for lora, weight in pieces:
            end = offset + lora.rank
            At[i, :, offset:end] = lora.A.T
            Bt[i, offset:end] = lora.B.T
            scale[i, 0, offset:end] = lora.scale * weight
            offset = end
    return RowDeltas(At, Bt, scale)
