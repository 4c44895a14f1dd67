"""Score completions fast: frozen bottom layers computed once, logits only where scored.

An online update runs a handful of steps over the same few rows (the new feedback,
replayed answers, anchor prompts). When the adapter sits on the top layers only,
everything below its first adapted layer is the frozen base: its hidden states are
the same at every step and every update. ``SplitForward`` keeps them per row (an
LRU of unpadded states keyed by the token ids) and backpropagates through the top
layers alone. The layers run over the rows packed into one sequence (``packing``):
no padding, and a prefix several rows share is computed once. The vocabulary
projection -- as large as eight SmolLM2 layers -- runs only at the positions that
predict a completion token.

The math is the model's own forward (``test_online_scoring`` checks logits and
gradients against it); models other than Llama-style decoders take the plain
forward and still get the sparse logits.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from adaptkit.learning.packing import Packing, groups, pack

# Decoders whose forward is embed -> layers(mask, rotary) -> norm, exactly as replayed below.
SPLITTABLE = ("llama", "qwen2", "qwen3", "mistral")
# Per (first top layer, row token ids): the row's states entering that layer.
BottomCache = OrderedDict[tuple[int, tuple[int, ...]], Tensor]
# Attention that takes an explicit 4-D additive mask (what packed rows need).
PACKABLE_ATTENTION = ("eager", "sdpa")
# Tokens per packed sequence: attention over it costs L^2, the linear layers L.
PACK_TOKENS = 1024


@dataclass
class Scored:
    """Next-token logits at the positions whose next token is a completion token."""

    logits: Tensor  # (N, V)
    rows: Tensor  # (N,) the batch row of each position
    targets: Tensor  # (N,) the completion token each position predicts
    n_rows: int

    def token_logps(self) -> Tensor:
        logps = torch.log_softmax(self.logits.float(), dim=-1)
        return logps.gather(-1, self.targets.unsqueeze(-1)).squeeze(-1)

    def sequence_logps(self) -> tuple[Tensor, Tensor]:
        """(sum of completion-token log-probs, number of completion tokens) per row."""
        picked = self.token_logps()
        sums = picked.new_zeros(self.n_rows).index_add(0, self.rows, picked)
        counts = torch.bincount(self.rows, minlength=self.n_rows)
        return sums, counts

    def select(self, first_row: int, end_row: int) -> Scored:
        """The positions of rows [first_row, end_row), renumbered from 0."""
        keep = (self.rows >= first_row) & (self.rows < end_row)
        return Scored(
            self.logits[keep], self.rows[keep] - first_row, self.targets[keep], end_row - first_row
        )


def scored_positions(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, positions, targets) of every position t whose label t+1 is scored."""
    shifted = labels[:, 1:]
    rows, positions = (shifted != -100).nonzero(as_tuple=True)
    return rows, positions, shifted[rows, positions]


def first_adapted_layer(model: PeftModel) -> int:
    """Index of the lowest decoder layer holding a LoRA module (0 when unknown)."""
    layers = _decoder(model).layers
    for index, layer in enumerate(layers):
        if any(isinstance(m, LoraLayer) for m in layer.modules()):
            return index
    return len(layers)


def _decoder(model: PeftModel) -> nn.Module:
    return model.get_base_model().model


def _run_packed(
    decoder: nn.Module, hidden: Tensor, packing: Packing, layers: nn.ModuleList
) -> Tensor:
    """What LlamaModel.forward does between the embeddings and the final norm, over one
    packed sequence (no cache): (L, H) states in, (L, H) states out."""
    hidden = hidden.unsqueeze(0)
    position_ids = packing.positions.unsqueeze(0)
    mask = packing.additive_mask(hidden.dtype)
    position_embeddings = decoder.rotary_emb(hidden, position_ids=position_ids)
    for layer in layers:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=position_embeddings,
            position_ids=position_ids,
            past_key_values=None,
            use_cache=False,
        )
    return hidden.squeeze(0)


class SplitForward:
    """Scores rows with a PEFT model, caching the frozen bottom layers' output per row.

    The layers run over packed rows (``packing``): a prefix that several rows share
    (the chat template's system prompt, a DPO pair's request) is computed once.
    """

    def __init__(
        self,
        model: PeftModel,
        *,
        cache_rows: int = 512,
        pack_tokens: int = PACK_TOKENS,
        bottoms: BottomCache | None = None,
    ) -> None:
        self.model = model
        self.cache_rows = cache_rows
        self.pack_tokens = pack_tokens
        # ``bottoms``: a cache shared with other SplitForwards over the same, unchanged
        # base weights (adapters trained one after the other on one loaded base).
        self._cache: BottomCache = bottoms if bottoms is not None else OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def splittable(self) -> bool:
        """Whether the layers can be replayed here (else the model's own forward runs)."""
        config = self.model.get_base_model().config
        return (
            getattr(config, "model_type", None) in SPLITTABLE
            and getattr(config, "_attn_implementation", "eager") in PACKABLE_ATTENTION
        )

    @property
    def start(self) -> int:
        """First layer the top part runs (0: nothing is cached)."""
        return first_adapted_layer(self.model) if self.splittable else 0

    @torch.no_grad()
    def _bottom(self, rows: list[tuple[int, ...]], packing: Packing, start: int) -> Tensor:
        """(L, H) states entering layer ``start`` at every slot of ``packing``."""
        decoder = _decoder(self.model)
        if start == 0:
            return decoder.embed_tokens(packing.token_ids)
        keys = [(start, row) for row in rows]
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = pack([rows[i] for i in missing])
            hidden = _run_packed(
                decoder, decoder.embed_tokens(fresh.token_ids), fresh, decoder.layers[:start]
            )
            for slots, i in zip(fresh.slots, missing, strict=True):
                self._cache[keys[i]] = hidden[slots].clone()
        out = torch.empty(
            packing.length, decoder.config.hidden_size, dtype=decoder.embed_tokens.weight.dtype
        )
        for slots, key in zip(packing.slots, keys, strict=True):
            self._cache.move_to_end(key)
            out[slots] = self._cache[key]
        while len(self._cache) > self.cache_rows:
            self._cache.popitem(last=False)
        return out

    def scored(
        self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, *, adapter: bool = True
    ) -> Scored:
        """Logits at the scored positions, differentiable w.r.t. the adapter."""
        rows, positions, targets = scored_positions(labels)
        base = self.model.get_base_model()
        if not self.splittable:
            with self._adapter(adapter):
                hidden = base.model(input_ids=input_ids, attention_mask=attention_mask)[0]
                logits = base.lm_head(hidden[rows, positions])
            return Scored(logits, rows, targets, input_ids.shape[0])
        decoder = _decoder(self.model)
        start = self.start
        lengths = attention_mask.sum(-1).tolist()
        ids = [tuple(row[:n].tolist()) for row, n in zip(input_ids, lengths, strict=True)]
        states: list[Tensor] = []
        slot_of: list[Tensor] = [torch.empty(0, dtype=torch.long)] * len(ids)
        offset = 0
        for group in groups(lengths, self.pack_tokens):
            members = [ids[i] for i in group]
            packing = pack(members)
            bottom = self._bottom(members, packing, start)
            with self._adapter(adapter):
                states.append(_run_packed(decoder, bottom, packing, decoder.layers[start:]))
            for i, slots in zip(group, packing.slots, strict=True):
                slot_of[i] = slots + offset
            offset += packing.length
        picked = torch.tensor(
            [int(slot_of[r][p]) for r, p in zip(rows.tolist(), positions.tolist(), strict=True)],
            dtype=torch.long,
        )
        hidden = torch.cat(states)[picked]
        with self._adapter(adapter):
            logits = base.lm_head(decoder.norm(hidden))
        return Scored(logits, rows, targets, input_ids.shape[0])

    def _adapter(self, enabled: bool) -> AbstractContextManager:
        return nullcontext() if enabled else self.model.disable_adapter()


__all__ = ["BottomCache", "Scored", "SplitForward", "first_adapted_layer", "scored_positions"]
