"""Score completions fast: frozen bottom layers computed once, logits only where scored.

An online update runs a handful of steps over the same few rows (the new feedback,
replayed answers, anchor prompts). When the adapter sits on the top layers only,
everything below its first adapted layer is the frozen base: its hidden states are
the same at every step and every update. ``SplitForward`` keeps them per row (an
LRU of unpadded states keyed by the token ids) and backpropagates through the top
layers alone. The vocabulary projection -- as large as eight SmolLM2 layers --
runs only at the positions that predict a completion token.

The math is the model's own forward (``test_online_scoring`` checks logits and
gradients against it); models other than Llama-style decoders, or adapters on
layer 0, take the plain forward and still get the sparse logits.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn
from transformers.masking_utils import create_causal_mask

# Decoders whose forward is embed -> layers(mask, rotary) -> norm, exactly as replayed below.
SPLITTABLE = ("llama", "qwen2", "qwen3", "mistral")


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


def _run_layers(
    decoder: nn.Module, hidden: Tensor, attention_mask: Tensor, layers: nn.ModuleList
) -> Tensor:
    # What LlamaModel.forward does between the embeddings and the final norm (no cache).
    position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    mask = create_causal_mask(
        config=decoder.config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        past_key_values=None,
        position_ids=position_ids,
    )
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
    return hidden


class SplitForward:
    """Scores rows with a PEFT model, caching the frozen bottom layers' output per row."""

    def __init__(self, model: PeftModel, *, cache_rows: int = 512) -> None:
        self.model = model
        self.cache_rows = cache_rows
        self._cache: OrderedDict[tuple[int, tuple[int, ...]], Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def start(self) -> int:
        """First layer the top part runs (0: nothing is cached)."""
        base = self.model.get_base_model()
        if getattr(base.config, "model_type", None) not in SPLITTABLE:
            return 0
        return first_adapted_layer(self.model)

    @torch.no_grad()
    def _bottom(self, input_ids: Tensor, attention_mask: Tensor, start: int) -> Tensor:
        """Hidden states entering layer ``start`` (right-padded rows: padding is never read)."""
        decoder = _decoder(self.model)
        lengths = attention_mask.sum(-1).tolist()
        keys = [(start, tuple(ids[:n].tolist())) for ids, n in zip(input_ids, lengths, strict=True)]
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            width = max(lengths[i] for i in missing)
            ids = input_ids[missing, :width]
            hidden = _run_layers(
                decoder,
                decoder.embed_tokens(ids),
                attention_mask[missing, :width],
                decoder.layers[:start],
            )
            for row, i in enumerate(missing):
                self._cache[keys[i]] = hidden[row, : lengths[i]].clone()
        out = torch.zeros(
            *input_ids.shape, decoder.config.hidden_size, dtype=decoder.embed_tokens.weight.dtype
        )
        for row, key in enumerate(keys):
            self._cache.move_to_end(key)
            out[row, : lengths[row]] = self._cache[key]
        while len(self._cache) > self.cache_rows:
            self._cache.popitem(last=False)
        return out

    def scored(
        self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, *, adapter: bool = True
    ) -> Scored:
        """Logits at the scored positions, differentiable w.r.t. the adapter."""
        rows, positions, targets = scored_positions(labels)
        base = self.model.get_base_model()
        start = self.start
        if start == 0:
            with self._adapter(adapter):
                hidden = base.model(input_ids=input_ids, attention_mask=attention_mask)[0]
        else:
            decoder = _decoder(self.model)
            bottom = self._bottom(input_ids, attention_mask, start)
            with self._adapter(adapter):
                top = _run_layers(decoder, bottom, attention_mask, decoder.layers[start:])
            hidden = decoder.norm(top)
        with self._adapter(adapter):
            logits = base.lm_head(hidden[rows, positions])
        return Scored(logits, rows, targets, input_ids.shape[0])

    def _adapter(self, enabled: bool) -> AbstractContextManager:
        return nullcontext() if enabled else self.model.disable_adapter()


__all__ = ["Scored", "SplitForward", "first_adapted_layer", "scored_positions"]
