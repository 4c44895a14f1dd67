"""The optimisation of one adapter: a few AdamW steps of the rule's loss plus the anchors.

Per step, one forward over [the rule's rows | replayed earlier answers | anchor rows]:

    loss = rule loss
         + sft loss on ``replay`` earlier answers of the user   (keeps what it learnt)
         + kl_weight * KL(base || adapter) on general prompts     (keeps general ability)
         + l2_weight * ||theta - theta_start||^2                    (stays near the warm start)

The KL term uses an ``AnchorSet``: the base model's answers to general prompts and its
full next-token distributions over them, computed once per base (``anchors``). The
same loop trains an online update and a whole log (``adaptkit.training``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from adaptkit.learning import losses
from adaptkit.learning.anchors import AnchorSet
from adaptkit.learning.encoding import encode_rows
from adaptkit.learning.rules import Example, Messages, UpdateRule
from adaptkit.learning.scoring import Scored
from adaptkit.learning.slot import AdapterSlot


class NonFiniteLossError(FloatingPointError):
    """A step produced a NaN/inf loss; the update is abandoned, the adapter restored."""


@dataclass(frozen=True)
class StepConfig:
    """What the step loop needs (``OnlineConfig`` and ``TrainConfig`` build it)."""

    steps: int
    lr: float
    max_length: int
    replay: int = 0  # earlier answers replayed per step
    anchor_prompts: int = 0  # anchor rows under KL per step
    kl_weight: float = 0.0
    l2_weight: float = 0.0
    seed: int = 0  # draws of the replayed answers and anchor rows


def run_steps(
    slot: AdapterSlot,
    rule: UpdateRule,
    batches: Callable[[int], list[Example]],
    config: StepConfig,
    *,
    replay_pool: Sequence[Example] = (),
    anchors: AnchorSet | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Optimise the slot's adapter in place; ``batches(step)`` gives that step's examples.

    Returns the loss of every step. Raises ``NonFiniteLossError`` (weights restored to
    where they started) on a NaN/inf loss or weight.
    """
    rng = random.Random(config.seed)
    parameters = slot.parameters()
    start = slot.snapshot()
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=0.0)
    reference = _ReferenceCache(slot, config.max_length)
    history: list[float] = []
    slot.model.eval()  # no dropout: LoRA dropout is 0 and the base has none worth having
    for step in range(config.steps):
        began = time.perf_counter()
        examples = batches(step)
        rule_rows = rule.rows(examples)
        reference_logps = reference.logps(rule_rows) if rule.needs_reference else None
        replay = _replay_rows(replay_pool, config.replay, rng)
        anchor_ids = _anchor_ids(anchors, config, rng)
        rows = rule_rows + replay + [anchors.rows[i] for i in anchor_ids]
        scored = slot.scored(encode_rows(slot.base.tokenizer, rows, config.max_length))
        n, r = len(rule_rows), len(replay)
        loss = rule.loss(examples, scored.select(0, n).sequence_logps(), reference_logps)
        if replay:
            loss = loss + losses.sft_loss(*scored.select(n, n + r).sequence_logps())
        if anchor_ids:
            loss = loss + config.kl_weight * _kl_term(scored, n + r, anchor_ids, anchors)
        if config.l2_weight > 0:
            loss = loss + config.l2_weight * losses.l2_to(parameters, start)
        if not torch.isfinite(loss):
            _abandon(slot, start, f"loss ({loss.item()})", step, rule)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if not all(bool(torch.isfinite(p).all()) for p in parameters):
            _abandon(slot, start, "adapter weights", step, rule)
        history.append(loss.item())
        if on_step is not None:
            on_step(step, time.perf_counter() - began)
    return history


class _ReferenceCache:
    """The base model's (adapter disabled) log-probs of rule rows, computed once per rows."""

    def __init__(self, slot: AdapterSlot, max_length: int) -> None:
        self.slot = slot
        self.max_length = max_length
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    def logps(self, rows: list[tuple[Messages, str]]) -> tuple[Tensor, Tensor]:
        key = repr(rows)
        if key not in self._cache:
            with torch.no_grad():
                encoded = encode_rows(self.slot.base.tokenizer, rows, self.max_length)
                self._cache[key] = self.slot.scored(encoded, adapter=False).sequence_logps()
        return self._cache[key]


def _replay_rows(
    pool: Sequence[Example], count: int, rng: random.Random
) -> list[tuple[Messages, str]]:
    if not count or not pool:
        return []
    return [(e.messages, e.completion) for e in rng.sample(list(pool), min(count, len(pool)))]


def _anchor_ids(anchors: AnchorSet | None, config: StepConfig, rng: random.Random) -> list[int]:
    if not (anchors and config.anchor_prompts and config.kl_weight > 0):
        return []
    return rng.sample(range(len(anchors.rows)), min(config.anchor_prompts, len(anchors.rows)))


def _kl_term(scored: Scored, first_row: int, anchor_ids: list[int], anchors: AnchorSet) -> Tensor:
    """Mean KL(base || adapter) over the anchor rows, which start at ``first_row``."""
    terms = []
    for offset, anchor in enumerate(anchor_ids):
        row = first_row + offset
        logits = scored.select(row, row + 1).logits
        terms.append(
            losses.kl_to_reference(
                logits.unsqueeze(0),
                anchors.reference[anchor].unsqueeze(0),
                torch.ones(1, logits.shape[0], dtype=torch.bool),
            )
        )
    return torch.stack(terms).mean()


def _abandon(
    slot: AdapterSlot, start: list[Tensor], what: str, step: int, rule: UpdateRule
) -> None:
    """Restore the adapter to where the update started and say what went non-finite."""
    slot.restore(start)
    raise NonFiniteLossError(
        f"non-finite {what} at step {step + 1} of the {rule.name} update; "
        "the adapter was left unchanged; lower --lr"
    )


__all__ = ["NonFiniteLossError", "StepConfig", "run_steps"]
