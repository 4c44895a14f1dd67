"""``adaptkit train --method dpo|kto|distill``: the online rules, applied to a whole log.

An interaction log's lines are turned into the same requests and events the feedback
log holds (an edit, a pair, a rating, a note), so a rule behaves the same offline
and online. ``sft`` keeps using ``adaptkit.training.train_sft``.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from weakref import WeakKeyDictionary

import torch
from tqdm.auto import tqdm

from adaptkit.base_model import BaseModel
from adaptkit.errors import InputError
from adaptkit.interactions import Interaction
from adaptkit.online.events import EventBatch, FeedbackEvent, Request
from adaptkit.online.probes import ANCHOR_PROMPTS
from adaptkit.online.rules import Example, RuleContext, build_rule, history_examples
from adaptkit.online.scoring import BottomCache
from adaptkit.online.slot import AdapterSlot
from adaptkit.online.steps import AnchorSet, OnlineConfig, run_steps
from adaptkit.prompting import as_messages, generate
from adaptkit.training import LoraSpec, SFTConfig, TrainedAdapter
from adaptkit.training.augment import RequestDropout


def events_from_log(user_id: str, interactions: Sequence[Interaction]) -> EventBatch:
    """One request per line with a response, and the events its feedback implies."""
    requests: dict[int, Request] = {}
    events: list[FeedbackEvent] = []
    for index, interaction in enumerate(interactions, start=1):
        feedback = interaction.feedback
        messages = tuple(as_messages(interaction.messages))
        response = interaction.response if interaction.response is not None else feedback.rejected
        requests[index] = Request(index, user_id, messages, response or "")
        event_id = len(events) + 1
        if feedback.edited is not None and interaction.response is not None:
            events.append(FeedbackEvent(user_id, "edit", index, text=feedback.edited, id=event_id))
        elif feedback.chosen is not None:
            events.append(
                FeedbackEvent(
                    user_id,
                    "pair",
                    index,
                    chosen=feedback.chosen,
                    rejected=feedback.rejected,
                    id=event_id,
                )
            )
        elif feedback.rating == -1:
            events.append(FeedbackEvent(user_id, "down", index, id=event_id))
        else:
            kind = "up" if feedback.rating == 1 else "accept"
            events.append(FeedbackEvent(user_id, kind, index, id=event_id))
        if feedback.note:
            events.append(
                FeedbackEvent(user_id, "note", None, text=feedback.note, id=len(events) + 1)
            )
    return EventBatch(user_id, tuple(events), requests)


# Word dropout draws this many thinned versions of each request, once, and every step
# picks one. The split forward caches the frozen layers' states per distinct row, and
# a fresh thinning at every step misses that cache: in the arena, a final adapter took
# 25.5 s with fresh thinnings, 22.6 s with 4 views and 20.1 s without dropout.
DROPOUT_VIEWS = 4


# The base model's answers to the anchor prompts, and its log-probs over them, per
# loaded base: the base never changes while loaded, so the 24 greedy answers and
# their scoring pass are not redone for every adapter trained on it.
_ANCHOR_SETS: WeakKeyDictionary[torch.nn.Module, dict[tuple[int, int], AnchorSet]] = (
    WeakKeyDictionary()
)


# The frozen bottom layers' states per row, per loaded base (``scoring.SplitForward``):
# the anchor rows recur in every adapter trained on that base, and a user's history
# views in each of their learning-curve points.
_BOTTOMS: WeakKeyDictionary[torch.nn.Module, BottomCache] = WeakKeyDictionary()


def _anchor_set(slot: AdapterSlot, max_length: int, answer_tokens: int) -> AnchorSet:
    built = _ANCHOR_SETS.setdefault(slot.base.model, {})
    key = (max_length, answer_tokens)
    if key not in built:
        built[key] = AnchorSet.build(slot, ANCHOR_PROMPTS, max_length, answer_tokens)
    return built[key]


def train_with_rule(
    base: BaseModel,
    interactions: Sequence[Interaction],
    method: str,
    lora: LoraSpec,
    config: SFTConfig,
    output_dir: Path,
    *,
    beta: float = 0.1,
    progress: bool = True,
    kl_anchor: bool = False,
) -> TrainedAdapter:
    """Train a fresh adapter on a log with ``method`` and save it (PEFT format).

    ``kl_anchor``: every step also pulls the adapter's next-token distributions on
    general prompts toward the base's, as the online trainer does (its defaults).
    The base model is left exactly as it was.
    """
    user_id = interactions[0].user_id
    batch = events_from_log(user_id, interactions)
    rule = build_rule(method, beta=beta)
    slot = AdapterSlot(base, lora, bottoms=_BOTTOMS.setdefault(base.model, OrderedDict()))
    try:
        slot.load(None, seed=config.seed)

        def teacher(conversations: list[list[dict[str, str]]]) -> list[str]:
            with slot.model.disable_adapter():
                return generate(slot.model, base.tokenizer, conversations, max_new_tokens=64)

        context = RuleContext(
            notes=[e.text for e in batch.events if e.kind == "note" and e.text],
            history=history_examples(batch),
            teacher=teacher,
        )
        examples = rule.select(batch, context).examples
        if not examples:
            raise InputError(
                f"--method {method}: the log of {user_id!r} has nothing this rule learns from "
                "(dpo needs edits or chosen/rejected pairs); try --method sft or kto"
            )
        rng = random.Random(config.seed)
        dropout = RequestDropout(config.word_dropout)
        views = [
            [
                replace(e, messages=dropout.messages(e.messages, e.completion, rng))
                for _ in range(DROPOUT_VIEWS)
            ]
            if config.word_dropout
            else [e]
            for e in examples
        ]
        order: list[int] = []

        def pick(index: int) -> Example:
            return rng.choice(views[index])

        def next_batch(_step: int) -> list[Example]:
            if len(order) < config.batch_size:
                fresh = list(range(len(examples)))
                rng.shuffle(fresh)
                order.extend(fresh)
            return [pick(order.pop()) for _ in range(min(config.batch_size, len(examples)))]

        online = OnlineConfig()
        steps = OnlineConfig(
            method=method,
            lr=config.lr,
            max_length=config.max_length,
            replay=0,
            anchor_prompts=online.anchor_prompts if kl_anchor else 0,
            kl_weight=online.kl_weight if kl_anchor else 0.0,
            beta=beta,
            seed=config.seed,
        )
        anchors = _anchor_set(slot, config.max_length, online.anchor_tokens) if kl_anchor else None
        bar = tqdm(
            total=config.steps, desc=f"training ({method})", unit="step", disable=not progress
        )
        started = time.perf_counter()
        history = run_steps(
            slot,
            rule,
            next_batch,
            replace(steps, steps=config.steps),
            anchors=anchors,
            on_step=lambda _s, _t: bar.update(1),
        )
        bar.close()
        slot.save(output_dir)
    finally:
        slot.model.unload()  # the shared base is exactly as before
    window = max(1, min(5, len(history) // 4))
    return TrainedAdapter(
        output_dir,
        {
            "examples": float(len(examples)),
            "steps": float(config.steps),
            "loss_first": sum(history[:window]) / window,
            "loss_last": sum(history[-window:]) / window,
            "train_seconds": time.perf_counter() - started,
        },
    )


__all__ = ["events_from_log", "train_with_rule"]
