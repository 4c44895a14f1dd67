"""The optimisation of one update: a few AdamW steps of the rule's loss plus the anchors.

Per step, one forward over [the rule's rows | replayed earlier answers | anchor rows]:

    loss = rule loss
         + sft loss on ``replay`` earlier answers of the user   (keeps what it learnt)
         + kl_weight * KL(base || adapter) on general prompts     (keeps general ability)
         + l2_weight * ||theta - theta_warm_start||^2               (stays near the last version)

The KL term uses the base model's answers to ``probes.ANCHOR_PROMPTS`` and its full
next-token distributions over them, computed once (the base never changes).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from adaptkit.errors import InputError
from adaptkit.online import losses
from adaptkit.online.rules import RULES, Example, UpdateRule
from adaptkit.online.slot import AdapterSlot, encode_rows
from adaptkit.prompting import as_messages, generate


class NonFiniteLossError(FloatingPointError):
    """A step produced a NaN/inf loss; the update is abandoned, the adapter restored."""


@dataclass(frozen=True)
class OnlineConfig:
    """Settings of online updates. Field names are the CLI flags (``--steps`` ...)."""

    method: str = field(
        default="sft", metadata={"help": "update rule: sft|dpo|kto|distill|contrast"}
    )
    steps: int = field(default=4, metadata={"help": "optimizer steps per update"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate"})
    max_length: int = field(default=96, metadata={"help": "tokens kept per example"})
    max_events: int = field(default=16, metadata={"help": "events coalesced into one update"})
    replay: int = field(default=2, metadata={"help": "earlier answers replayed per step"})
    anchor_prompts: int = field(default=4, metadata={"help": "general prompts per step (KL)"})
    kl_weight: float = field(default=10.0, metadata={"help": "weight of KL(base || adapter)"})
    anchor_tokens: int = field(
        default=12, metadata={"help": "tokens of each general prompt's base answer under KL"}
    )
    l2_weight: float = field(default=0.0, metadata={"help": "pull toward the previous version"})
    beta: float = field(default=0.1, metadata={"help": "dpo/kto temperature"})
    holdout_every: int = field(default=5, metadata={"help": "hold back events with id % N == 0"})
    backtrack: int = field(
        default=1, metadata={"help": "halvings of an update tried when the gate refuses it"}
    )
    teacher_tokens: int = field(default=48, metadata={"help": "distill: teacher answer length"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        problems = []
        if self.method not in RULES:
            problems.append(f"--method must be one of {', '.join(RULES)}, got {self.method!r}")
        for name, least in (
            ("steps", 1),
            ("max_events", 1),
            ("teacher_tokens", 1),
            ("anchor_tokens", 1),
            ("replay", 0),
            ("anchor_prompts", 0),
            ("holdout_every", 0),
            ("backtrack", 0),
        ):
            value = getattr(self, name)
            if value < least:
                problems.append(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
        for name in ("lr", "beta"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                problems.append(f"--{name} must be a positive finite number, got {value}")
        for name in ("kl_weight", "l2_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                problems.append(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.max_length < 16:
            problems.append(f"--max-length must be >= 16, got {self.max_length}")
        if problems:
            raise InputError("; ".join(problems))


@dataclass
class AnchorSet:
    """General prompts with the base model's answers and next-token log-probs."""

    rows: list[tuple[tuple[dict, ...], str]]
    reference: list[Tensor]  # per row: (answer tokens, vocab) log-probs of the base

    @classmethod
    @torch.no_grad()
    def build(
        cls, slot: AdapterSlot, prompts: Sequence[str], max_length: int, answer_tokens: int = 32
    ) -> AnchorSet:
        if not prompts:
            return cls([], [])
        tokenizer = slot.base.tokenizer
        conversations = [as_messages(p) for p in prompts]
        with slot.model.disable_adapter():
            answers = generate(slot.model, tokenizer, conversations, max_new_tokens=answer_tokens)
        rows = [(tuple(c), a) for c, a in zip(conversations, answers, strict=True) if a.strip()]
        scored = slot.scored(encode_rows(tokenizer, rows, max_length), adapter=False)
        logps = torch.log_softmax(scored.logits.float(), dim=-1)
        return cls(rows, [logps[scored.rows == i] for i in range(len(rows))])


@dataclass
class StepResult:
    losses: list[float]
    seconds_per_step: float


def run_steps(
    slot: AdapterSlot,
    rule: UpdateRule,
    batches: Callable[[int], list[Example]],
    config: OnlineConfig,
    *,
    replay_pool: Sequence[Example] = (),
    anchors: AnchorSet | None = None,
    steps: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Optimise the slot's adapter in place; ``batches(step)`` gives that step's examples.

    Raises ``NonFiniteLossError`` (weights restored to where they started) on NaN/inf.
    """
    import time

    tokenizer = slot.base.tokenizer
    rng = random.Random(config.seed)
    parameters = slot.parameters()
    start = slot.snapshot()
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=0.0)
    reference_cache: dict[str, tuple[Tensor, Tensor]] = {}
    history: list[float] = []
    slot.model.eval()  # no dropout: LoRA dropout is 0 and the base has none worth having
    for step in range(steps or config.steps):
        began = time.perf_counter()
        examples = batches(step)
        rule_rows = rule.rows(examples)
        reference = None
        if rule.needs_reference:
            key = repr(rule_rows)
            if key not in reference_cache:
                with torch.no_grad():
                    encoded = encode_rows(tokenizer, rule_rows, config.max_length)
                    reference_cache[key] = slot.scored(encoded, adapter=False).sequence_logps()
            reference = reference_cache[key]
        replay = (
            [
                (e.messages, e.completion)
                for e in rng.sample(list(replay_pool), min(config.replay, len(replay_pool)))
            ]
            if config.replay and replay_pool
            else []
        )
        anchor_ids = (
            rng.sample(range(len(anchors.rows)), min(config.anchor_prompts, len(anchors.rows)))
            if anchors and config.anchor_prompts and config.kl_weight > 0
            else []
        )
        rows = rule_rows + replay + [anchors.rows[i] for i in anchor_ids]
        encoded = encode_rows(tokenizer, rows, config.max_length)
        scored = slot.scored(encoded)
        n, r = len(rule_rows), len(replay)
        loss = rule.loss(examples, scored.select(0, n).sequence_logps(), reference)
        if replay:
            loss = loss + losses.sft_loss(*scored.select(n, n + r).sequence_logps())
        if anchor_ids:
            kl_terms = []
            for offset, anchor in enumerate(anchor_ids):
                row = n + r + offset
                logits = scored.select(row, row + 1).logits
                kl_terms.append(
                    losses.kl_to_reference(
                        logits.unsqueeze(0),
                        anchors.reference[anchor].unsqueeze(0),
                        torch.ones(1, logits.shape[0], dtype=torch.bool),
                    )
                )
            loss = loss + config.kl_weight * torch.stack(kl_terms).mean()
        if config.l2_weight > 0:
            loss = loss + config.l2_weight * losses.l2_to(parameters, start)
        if not torch.isfinite(loss):
            slot.restore(start)
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at step {step + 1} of the {rule.name} update; "
                "the adapter was left unchanged; lower --lr"
            )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if not all(bool(torch.isfinite(p).all()) for p in parameters):
            slot.restore(start)
            raise NonFiniteLossError(
                f"non-finite adapter weights after step {step + 1} of the {rule.name} update; "
                "the adapter was left unchanged; lower --lr"
            )
        history.append(loss.item())
        if on_step is not None:
            on_step(step, time.perf_counter() - began)
    return history
