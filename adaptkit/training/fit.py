"""Train a user's adapter on a whole interaction log, with any update rule.

An interaction log's lines are turned into the same completions and events the
feedback log holds (an edit, a pair, a rating, a note: ``feedback.events_from_log``),
so a rule behaves the same on a log as online; the same step loop trains both.

``Fitter`` is bound to one loaded base model and owns what adapters trained on it
share: the KL anchor's base answers and the frozen bottom layers' states
(``learning.BaseCaches``). Train many adapters with one fitter.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from adaptkit.base_model import BaseModel
from adaptkit.errors import InputError
from adaptkit.feedback import events_from_log
from adaptkit.interactions import Interaction
from adaptkit.learning import (
    ANCHOR_TOKENS,
    AdapterSlot,
    BaseCaches,
    Example,
    LoraSpec,
    RequestDropout,
    RuleContext,
    UpdateRule,
    build_rule,
    history_examples,
    run_steps,
)
from adaptkit.prompting import generate
from adaptkit.training.config import TrainConfig

# Word dropout draws this many thinned versions of each request, once, and every step
# picks one. The split forward caches the frozen layers' states per distinct row, and
# a fresh thinning at every step misses that cache (training time per user in the
# arena, with and without views: benchmarks/results/README.md).
DROPOUT_VIEWS = 4
TEACHER_TOKENS = 64  # distill: length of the teacher's answers


@dataclass(frozen=True)
class TrainedAdapter:
    """A trained adapter staged on disk in PEFT format, not yet in the registry."""

    directory: Path
    metrics: dict[str, float]


class Fitter:
    """Trains adapters on logs over one base model, which it leaves exactly as it was."""

    def __init__(self, base: BaseModel) -> None:
        self.base = base
        self.caches = BaseCaches()

    def fit(
        self,
        interactions: Sequence[Interaction],
        method: str,
        lora: LoraSpec,
        config: TrainConfig,
        output_dir: Path,
        *,
        kl_anchor: bool = False,
        beta: float = 0.1,
        progress: bool = True,
    ) -> TrainedAdapter:
        """Train a fresh adapter on one user's ``interactions`` with ``method``; save it
        (PEFT format) into ``output_dir``.

        ``kl_anchor``: every step also pulls the adapter's next-token distributions on
        general prompts toward the base's, as the online trainer does (its defaults).
        """
        rule = build_rule(method, beta=beta, choice_weight=config.choice_weight)
        slot = AdapterSlot(self.base, lora, bottoms=self.caches.bottoms)
        try:
            slot.reset(seed=config.seed)
            examples = self._examples(slot, interactions, rule)
            anchors = (
                self.caches.anchors(slot, max_length=config.max_length, answer_tokens=ANCHOR_TOKENS)
                if kl_anchor
                else None
            )
            bar = tqdm(
                total=config.steps, desc=f"training ({method})", unit="step", disable=not progress
            )
            started = time.perf_counter()
            losses = run_steps(
                slot,
                rule,
                _shuffled_batches(examples, config),
                config.step_config(kl_anchor=kl_anchor),
                anchors=anchors,
                on_step=lambda _step, _seconds: bar.update(1),
            )
            seconds = time.perf_counter() - started
            bar.close()
            slot.save(output_dir)
        finally:
            slot.model.unload()  # the shared base is exactly as before
        return TrainedAdapter(output_dir, _metrics(len(examples), losses, seconds))

    def _examples(
        self, slot: AdapterSlot, interactions: Sequence[Interaction], rule: UpdateRule
    ) -> list[Example]:
        """What ``rule`` learns from in the log; an error when that is nothing."""
        user_id = interactions[0].user_id
        batch = events_from_log(user_id, interactions)

        def teacher(conversations: list[list[dict[str, str]]]) -> list[str]:
            with slot.model.disable_adapter():
                return generate(
                    slot.model, self.base.tokenizer, conversations, max_new_tokens=TEACHER_TOKENS
                )

        context = RuleContext(
            notes=[e.text for e in batch.events if e.kind == "note" and e.text],
            history=history_examples(batch),
            teacher=teacher,
        )
        examples = rule.select(batch, context).examples
        if not examples:
            raise InputError(
                f"--method {rule.name}: the log of {user_id!r} has nothing this rule learns from "
                "(sft needs an answer not rated -1, dpo edits or chosen/rejected pairs); "
                "try another --method"
            )
        return examples


def _shuffled_batches(examples: list[Example], config: TrainConfig):
    """``batches(step)`` for the step loop: epochs over the examples in a seeded random
    order, each example one of its word-dropout views (``learning.augment``). A decision
    (``learning.decisions``) keeps its request whole: dropout keeps the words its answer
    repeats, which would be the chosen option's words only."""
    rng = random.Random(config.seed)
    dropout = RequestDropout(config.word_dropout)
    views = [
        [
            replace(e, messages=dropout.messages(e.messages, e.completion, rng))
            for _ in range(DROPOUT_VIEWS)
        ]
        if config.word_dropout and not e.choices
        else [e]
        for e in examples
    ]
    order: list[int] = []

    def next_batch(_step: int) -> list[Example]:
        if len(order) < config.batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order.extend(fresh)
        return [
            rng.choice(views[order.pop()]) for _ in range(min(config.batch_size, len(examples)))
        ]

    return next_batch


def _metrics(examples: int, losses: list[float], seconds: float) -> dict[str, float]:
    window = max(1, min(5, len(losses) // 4))
    return {
        "examples": float(examples),
        "steps": float(len(losses)),
        "loss_first": sum(losses[:window]) / window,
        "loss_last": sum(losses[-window:]) / window,
        "train_seconds": seconds,
    }


__all__ = ["Fitter", "TrainedAdapter"]
