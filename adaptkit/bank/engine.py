"""``Engine``: many users, one base model, one batched generation.

    engine = AdaptKit(home="~/.adaptkit").engine      # or Engine(base, registry)
    results = engine.generate([Request("How far is the zoo?", user="alice"),
                               Request("What should I cook?", user="bob")])

Per call: plan every request (router), load every adapter the plans name (bank:
RAM hit or cold load from the registry's blobs), and only then compute. A bad
row (unknown user or shared adapter, incompatible adapter, non-finite weight)
is an error naming it before any compute; with ``errors="return"`` the other
rows are computed exactly as planned and the bad row carries its error.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Hashable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from adaptkit.bank.adapter import AdapterWeights, RowAdapters
from adaptkit.bank.calibration import Calibration, calibrated_choice
from adaptkit.bank.lora_linear import (
    MultiLoraLinear,
    RowDeltas,
    SharedDelta,
    unwrap_linears,
    wrap_linears,
)
from adaptkit.bank.merge import fold, merge_refusal, unfold
from adaptkit.bank.repetition import Repetition, RepetitionState
from adaptkit.bank.slots import RowSlots, compaction, write_row
from adaptkit.bank.store import DEFAULT_CACHE_BYTES, AdapterBank
from adaptkit.base_model import CATALOGUE, BaseModel
from adaptkit.errors import AdaptkitError, InputError
from adaptkit.prompting import as_messages, encode_prompt, left_pad, pad_token_id, stop_token_ids
from adaptkit.registry import Registry
from adaptkit.router import (
    Plan,
    PlannedAdapter,
    Request,
    Router,
    RoutingPolicy,
    first_error,
    row_error,
)

DEFAULT_SHARED_DIR = Path("adapters/shared")
# Shorter shared prefixes are prefilled with each row: two forwards would cost more.
MIN_SHARED_PREFIX = 8


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
            self.router = Router(
                self.bank, policy, merge_refusal=merge_refusal(base.quant), base=base.backend
            )
        except BaseException:
            self.close()
            raise

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
        first = _row_key(rows[0])
        uniform = all(_row_key(row) == first for row in rows[1:])
        for name, wrapper in self.wrappers.items():
            if uniform:
                wrapper.delta = _shared_delta(name, rows[0])
            else:
                wrapper.delta = _row_deltas(name, rows, wrapper)

    def select_rows(self, index: torch.Tensor) -> None:
        """Make row i of the next forward use what row ``index[i]`` of the current rows
        uses: rows that leave a batch, or one row per adapter set. The stacked
        tensors are indexed, not rebuilt from the adapters."""
        for wrapper in self.wrappers.values():
            if isinstance(wrapper.delta, RowDeltas):
                wrapper.delta = wrapper.delta.select(index)

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
        calibration: Calibration | None = None,
        repetition: Repetition | Sequence[Repetition] | None = None,
    ) -> list[Result]:
        """Greedy answers for requests of any users, in one batch, each with its plan.

        ``calibration``: choose each answer's first tokens by calibrated decoding
        (``adaptkit.bank.calibration``); None: plain greedy decoding.
        ``repetition``: repetition control (``adaptkit.bank.repetition``), one for every
        row or one per request; None: none.
        """
        if errors not in ("raise", "return"):
            raise InputError(f"errors={errors!r}: choose 'raise' or 'return'")
        settings = _per_row(repetition, len(requests))
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
                calibration=calibration,
                repetition=[settings[i] for i in live],
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

    def session(self) -> DecodeSession:
        """A step-wise decode whose rows join and leave between steps (continuous
        batching). Like ``generate``, it owns the layers while it has rows: do not call
        ``generate`` while a session is decoding."""
        return DecodeSession(self)

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
        calibration: Calibration | None,
        repetition: Sequence[Repetition],
    ) -> list[tuple[list[int], str]]:
        if not requests:
            return []
        tokenizer = self.base.tokenizer
        prompts = [encode_prompt(tokenizer, as_messages(r.prompt)) for r in requests]
        options = (max_new_tokens, min_new_tokens, calibration, repetition)
        if merge:
            with self.merged(rows[0]):
                answers = self._decode(prompts, None, *options)
        else:
            try:
                answers = self._decode(prompts, rows, *options)
            finally:
                self.clear_rows()
        return [
            (tokens, tokenizer.decode(tokens, skip_special_tokens=True).strip())
            for tokens in answers
        ]

    def _decode(
        self,
        prompts: list[list[int]],
        rows: Sequence[RowAdapters] | None,
        max_new_tokens: int,
        min_new_tokens: int,
        calibration: Calibration | None,
        repetition: Sequence[Repetition],
    ) -> list[list[int]]:
        """Each row's answer tokens, greedy (the first ``calibration.tokens`` of them
        calibrated) on logits under each row's ``repetition`` control. ``rows`` None:
        the adapters are merged already.

        Finished rows leave the batch (their KV cache and adapter rows with them), so
        a batch costs what its open answers need, not all its rows until the longest ends.
        """
        tokenizer = self.base.tokenizer
        stop_ids = stop_token_ids(tokenizer)
        stops = torch.tensor(stop_ids)
        head = min(calibration.tokens, max_new_tokens) if calibration and calibration.active else 0
        keys = [_row_key(row) for row in rows] if rows is not None else [()] * len(prompts)
        if rows is not None:
            self.set_rows(rows)  # once: rows that leave or share are indexed from it
        request = self._prefill(prompts, rows, keys)
        prior = self._twins(rows, keys, calibration) if head else None
        # Plain decoding keeps no history.
        controlled = any(setting.active for setting in repetition)
        history = RepetitionState(prompts, repetition) if controlled else None
        open_rows = list(range(len(prompts)))  # the original index of each batch row
        answers: list[list[int]] = [[] for _ in prompts]
        for step in range(max_new_tokens):
            logits = request.logits if history is None else history.apply(request.logits)
            if step < min_new_tokens:
                logits = logits.clone()
                logits[:, stops] = float("-inf")
            if prior is not None and step < head:
                token = calibrated_choice(logits, prior.logits, calibration)
            else:
                token = logits.argmax(dim=-1)
            for index, chosen in zip(open_rows, token.tolist(), strict=True):
                answers[index].append(chosen)
            if history is not None:
                history.append(token)
            going = ~torch.isin(token, stops)
            if step + 1 == max_new_tokens or not bool(going.any()):
                break
            if not bool(going.all()):
                keep = going.nonzero().flatten()
                open_rows = [open_rows[i] for i in keep.tolist()]
                request.select(keep)
                if prior is not None and step + 1 < head:
                    prior.select(keep)
                if rows is not None:
                    self.select_rows(keep)
                if history is not None:
                    history.select(keep)
                token = token[keep]
            if prior is not None and step + 1 < head:
                prior.feed(token)  # the twin reads the same answer prefix as its row
            elif prior is not None:
                prior = None  # calibrated head done: the twins' cache is not needed
            request.feed(token)
        return answers

    def _prefill(
        self, prompts: list[list[int]], rows: Sequence[RowAdapters] | None, keys: list[tuple]
    ) -> _Stream:
        """A stream over ``prompts``, the prefix they all share computed once per distinct
        adapter set (with SmolLM2's chat template, a 22-token system prompt: half of a
        short request). The rows' own tokens follow after padding, so each row reads
        prefix + pad + its own tokens, positions counting real tokens only."""
        shared = _common_prefix(prompts)
        pad_id = pad_token_id(self.base.tokenizer)
        if shared < MIN_SHARED_PREFIX or len(set(keys)) == len(prompts):
            return _Stream(self.base.model, *left_pad(prompts, pad_id))
        stream = self._once_per_adapter_set(prompts[0][:shared], rows, keys)
        stream.extend(*left_pad([prompt[shared:] for prompt in prompts], pad_id))
        return stream

    def _twins(
        self, rows: Sequence[RowAdapters] | None, keys: list[tuple], calibration: Calibration
    ) -> _Stream:
        """The content-free twin of every row, on that row's adapters: a batch of 192 rows
        over 40 adapter versions prefills 40 twins."""
        null = encode_prompt(self.base.tokenizer, calibration.null_messages())
        return self._once_per_adapter_set(null, rows, keys)

    def _once_per_adapter_set(
        self, token_ids: list[int], rows: Sequence[RowAdapters] | None, keys: list[tuple]
    ) -> _Stream:
        """A stream of ``token_ids`` for every row, run once per distinct adapter set and
        copied to the rows that share it. The layers (set for all ``rows``) are left so."""
        first_row: dict[tuple, int] = {}
        for index, key in enumerate(keys):
            first_row.setdefault(key, index)
        ids = torch.tensor([token_ids]).expand(len(first_row), -1)
        every_row = {name: wrapper.delta for name, wrapper in self.wrappers.items()}
        if rows is not None:
            self.select_rows(torch.tensor(list(first_row.values())))
        try:
            stream = _Stream(self.base.model, ids, torch.ones_like(ids))
        finally:
            for name, wrapper in self.wrappers.items():
                wrapper.delta = every_row[name]
        slot = {key: position for position, key in enumerate(first_row)}
        stream.select(torch.tensor([slot[key] for key in keys]))
        return stream


def _per_row(repetition: Repetition | Sequence[Repetition] | None, rows: int) -> list[Repetition]:
    """One ``Repetition`` per request, from one for all (or None: none) or one each."""
    if repetition is None:
        return [Repetition()] * rows
    if isinstance(repetition, Repetition):
        return [repetition] * rows
    settings = list(repetition)
    if len(settings) != rows or not all(isinstance(s, Repetition) for s in settings):
        raise InputError(
            f"repetition: give one Repetition for every request or one per request "
            f"({rows}), got {len(settings)} items"
        )
    return settings


@dataclass(frozen=True)
class Sampling:
    """How one row picks its tokens: greedy at ``temperature`` 0, else sampled from the
    ``top_p`` nucleus with its own generator (``seed``: reproducible). Both choose from
    the logits after the row's ``repetition`` control."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    repetition: Repetition = Repetition()

    def problems(self) -> list[str]:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            problems.append(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        return problems


@dataclass(eq=False)
class SessionRow:
    """One request decoding in a ``DecodeSession``: its plan, its tokens so far, and why
    it ended (``finish``: "stop" for a stop token, "length" at ``max_new_tokens``,
    "retired" when the caller took it out)."""

    id: int
    request: Request
    plan: Plan
    sampling: Sampling
    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None
    adapters: RowAdapters = ()
    pinned: list[Hashable] = field(default_factory=list, repr=False)
    generator: torch.Generator | None = field(default=None, repr=False)


class DecodeSession:
    """Rows (requests of any users) join and leave a running batch between decode steps.

    ``admit`` plans, loads and prefills new rows (one forward for all of them) and
    appends them to the batch; ``step`` gives every row one token (one forward for the
    whole batch, each row with its own adapters) and drops the rows that ended;
    ``retire`` drops rows the caller no longer wants (a client gone, a stop string).
    A row's answer is the one ``Engine.generate`` gives it alone (greedy).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.rows: list[SessionRow] = []
        self._slots = RowSlots(engine.wrappers)  # row i's adapters in slot i
        self._stream: _Stream | None = None
        self._history: RepetitionState | None = None  # row for row with the stream
        self._ids = itertools.count(1)
        tokenizer = engine.base.tokenizer
        self._stops = set(stop_token_ids(tokenizer))
        self._pad_id = pad_token_id(tokenizer)
        self.context_tokens = int(
            getattr(engine.base.model.config, "max_position_embeddings", 2048)
        )

    def admit(
        self, entries: Sequence[tuple[Request, Sampling]]
    ) -> list[SessionRow | AdaptkitError]:
        """Add requests to the batch; each entry becomes a row, or the error that stops it
        (unknown user or version, a prompt longer than the context, bad sampling), found
        before anything is computed. The other rows are admitted as usual."""
        admitted: list[SessionRow] = []
        prompts: list[list[int]] = []
        outcome: list[SessionRow | AdaptkitError] = []
        for request, sampling in entries:
            try:
                row, prompt = self._row(request, sampling)
            except AdaptkitError as error:
                outcome.append(error)
                continue
            admitted.append(row)
            prompts.append(prompt)
            outcome.append(row)
        if admitted:
            try:
                self._prefill(admitted, prompts)
            except BaseException:
                for row in admitted:
                    self._unpin(row)
                raise
        return outcome

    def _row(self, request: Request, sampling: Sampling) -> tuple[SessionRow, list[int]]:
        problems = sampling.problems()
        prompt = encode_prompt(self.engine.base.tokenizer, as_messages(request.prompt))
        if len(prompt) + sampling.max_new_tokens > self.context_tokens:
            problems.append(
                f"the prompt is {len(prompt)} tokens and max_new_tokens "
                f"{sampling.max_new_tokens}: more than the model's context of "
                f"{self.context_tokens} tokens; shorten the messages or max_new_tokens"
            )
        if problems:
            raise InputError("; ".join(problems))
        plan = self.engine.router.plan(request)
        pinned: list[Hashable] = []
        try:
            adapters = self.engine._load(plan, pinned)
        except BaseException:
            for key in pinned:
                self.engine.bank.cache.unpin(key)
            raise
        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator()
            if sampling.seed is None:
                generator.seed()
            else:
                generator.manual_seed(sampling.seed)
        row = SessionRow(
            next(self._ids),
            request,
            plan,
            sampling,
            len(prompt),
            adapters=adapters,
            pinned=pinned,
            generator=generator,
        )
        return row, prompt

    @torch.inference_mode()
    def _prefill(self, rows: list[SessionRow], prompts: list[list[int]]) -> None:
        """One forward over the new rows alone (on their own slots), then join them."""
        start = len(self.rows)
        self._slots.append([row.adapters for row in rows])
        self._slots.point(start, start + len(rows))
        try:
            fresh = _Stream(self.engine.base.model, *left_pad(prompts, self._pad_id))
        except BaseException:
            self._slots.compact(list(range(start)))  # the running rows, as they were
            self._slots.point(0, start)
            raise
        history = RepetitionState(prompts, [row.sampling.repetition for row in rows])
        if self._stream is None:
            self._stream, self._history = fresh, history
        else:
            self._stream.join(fresh)
            self._history.join(history)
        self.rows.extend(rows)
        self._slots.point(0, len(self.rows))

    @torch.inference_mode()
    def step(self) -> list[SessionRow]:
        """One token for every row (one forward); returns the rows, the ones that ended
        (``finish`` set) already out of the batch."""
        if self._stream is None:
            return []
        stepped = list(self.rows)
        chosen = self._choose(self._history.apply(self._stream.logits))
        self._history.append(chosen)
        for row, token in zip(stepped, chosen.tolist(), strict=True):
            row.tokens.append(token)
            if token in self._stops:
                row.finish = "stop"
            elif len(row.tokens) >= row.sampling.max_new_tokens:
                row.finish = "length"
        order = self._keep([i for i, row in enumerate(stepped) if row.finish is None])
        if self._stream is not None:
            self._stream.feed(chosen[torch.tensor(order)])
        return stepped

    def retire(self, rows: Sequence[SessionRow]) -> None:
        """Take ``rows`` out of the batch now (their cache and adapter rows with them)."""
        leaving = {id(row) for row in rows}
        for row in rows:
            if row.finish is None:
                row.finish = "retired"
        self._keep([i for i, row in enumerate(self.rows) if id(row) not in leaving])

    def _keep(self, keep: list[int]) -> list[int]:
        """Keep the rows ``keep``; returns the batch's new order (old row indices): a
        leaver's place goes to a row from the end, so only that row's slot is copied."""
        staying = set(keep)
        for index, row in enumerate(self.rows):
            if index not in staying:
                self._unpin(row)
        order = compaction(len(self.rows), keep)
        if len(order) == len(self.rows):
            return order
        self.rows = [self.rows[i] for i in order]
        if not order:
            self._stream = self._history = None
            self._slots.clear()
            return order
        index = torch.tensor(order)
        self._stream.select(index)
        self._stream.trim()
        self._history.select(index)
        self._slots.compact(order)
        self._slots.point(0, len(order))
        return order

    def _unpin(self, row: SessionRow) -> None:
        for key in row.pinned:
            self.engine.bank.cache.unpin(key)
        row.pinned.clear()

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token: argmax, or a sample under its temperature and top_p
        (``logits``: the rows' repetition control applied already)."""
        chosen = logits.argmax(dim=-1)
        for i, row in enumerate(self.rows):
            if row.generator is None:
                continue
            probs = torch.softmax(logits[i].float() / row.sampling.temperature, dim=-1)
            if row.sampling.top_p < 1.0:
                ordered, order = probs.sort(descending=True)
                # Keep the smallest prefix whose mass reaches top_p (always the first).
                outside = ordered.cumsum(0) - ordered >= row.sampling.top_p
                probs = probs.clone()
                probs[order[outside]] = 0.0
            chosen[i] = torch.multinomial(probs, 1, generator=row.generator)[0]
        return chosen

    def close(self) -> None:
        """Retire every row."""
        self.retire(list(self.rows))


class _Stream:
    """One batch decoded token by token over its own KV cache (padding allowed anywhere
    before a row's last token; positions count real tokens only, as generate's do)."""

    def __init__(self, model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor):
        self.model = model
        self.cache = DynamicCache()
        self.mask = mask[:, :0]
        self.last_position = torch.full((len(mask), 1), -1)
        self.extend(input_ids, mask)

    def extend(self, input_ids: torch.Tensor, mask: torch.Tensor) -> None:
        """Feed more tokens to every row (``mask`` 0: padding) and keep the last logits."""
        self.mask = torch.cat([self.mask, mask], dim=1)
        positions = self.last_position + mask.cumsum(-1)
        self.last_position = positions[:, -1:]
        output = self.model(
            input_ids=input_ids,
            attention_mask=self.mask,
            position_ids=positions.clamp(min=0),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.logits = output.logits[:, -1]

    def select(self, index: torch.Tensor) -> None:
        """Keep (or repeat) the rows ``index`` names, in that order."""
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.last_position = self.last_position[index]
        self.logits = self.logits[index]

    def feed(self, token: torch.Tensor) -> None:
        self.extend(token[:, None], torch.ones_like(token[:, None]))

    def join(self, other: _Stream) -> None:
        """Append ``other``'s rows: both caches are left-padded (masked) to one length."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
            mine.values = torch.cat(
                [_pad_left(mine.values, width), _pad_left(theirs.values, width)]
            )
        self.mask = torch.cat(
            [
                F.pad(self.mask, (width - self.mask.shape[1], 0)),
                F.pad(other.mask, (width - other.mask.shape[1], 0)),
            ]
        )
        self.last_position = torch.cat([self.last_position, other.last_position])
        self.logits = torch.cat([self.logits, other.logits])

    def trim(self) -> None:
        """Drop the leading columns no row attends to (left by rows that left)."""
        first = int(self.mask.any(dim=0).int().argmax())
        if first == 0:
            return
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, first:]
            layer.values = layer.values[:, :, first:]


def _pad_left(states: torch.Tensor, width: int) -> torch.Tensor:
    """(rows, heads, tokens, dim) states left-padded with zeros to ``width`` tokens."""
    return F.pad(states, (0, 0, width - states.shape[2], 0))


def _common_prefix(prompts: Sequence[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least its last token of its own
    (the row's first answer token is read from it)."""
    shortest = min(len(prompt) for prompt in prompts)
    first = prompts[0]
    length = 0
    while length < shortest - 1 and all(prompt[length] == first[length] for prompt in prompts):
        length += 1
    return length


def _row_key(row: RowAdapters) -> tuple:
    """Rows with equal keys compute with the very same adapters and weights."""
    return tuple((id(adapter), weight) for adapter, weight in row)


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
    deltas = RowDeltas(
        torch.zeros(len(rows), shape.in_features, rank),
        torch.zeros(len(rows), rank, shape.out_features),
        torch.zeros(len(rows), 1, rank),
    )
    for i, pieces in enumerate(per_row):
        write_row(deltas, i, pieces)
    return deltas
