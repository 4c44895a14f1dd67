"""The two seams the arena runner talks through, and their implementations over ``AdaptKit``.

- ``Responder``: answer a batch of bank ``Request`` rows, each for its own user and
  pinned adapter version (``user=None``: the base model). ``KitResponder``: the kit's
  long-lived ``Engine``, one batched forward per token whatever mix of users and
  versions the batch holds.
- ``Learner``: learn this user's adapter from these history records. ``KitLearner``:
  ``AdaptKit.train`` (published in the run's registry); ``OnlineLearner``: the history
  streamed as feedback through the ``OnlineTrainer``.

The runner never imports torch or PEFT: swapping either piece changes no runner code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from adaptkit.arena.episodes import HistoryRecord
from adaptkit.bank import Calibration, Repetition
from adaptkit.base_model import load_base
from adaptkit.errors import InputError, UnknownUserError
from adaptkit.feedback import FeedbackEvent
from adaptkit.interactions import Interaction, Message
from adaptkit.kit import AdaptKit
from adaptkit.learning import ANCHOR_PROMPTS, LoraSpec, online_lora
from adaptkit.online import OnlineConfig, OnlineTrainer
from adaptkit.prompting import encode_prompt
from adaptkit.router import Request
from adaptkit.training import TrainConfig

# Trained by AdaptKit.train: method -> (its update rule, whether the KL anchor is on).
KIT_METHODS = {
    "sft": ("sft", False),
    "sft-anchor": ("sft", False),  # plus the base's own answers to ANCHOR_PROMPTS
    "sft-kl": ("sft", True),
    "contrast-kl": ("contrast", True),
    "principles-kl": ("principles", True),
}
METHODS = (*KIT_METHODS, "online")  # online: streamed through OnlineTrainer

# Replay for "sft-anchor": general requests no user's habit applies to (the KL
# anchor's prompts), answered by the base model itself. Training on them next to the
# history anchors the adapter to the base's behaviour off the user's habits.
ANCHOR_MAX_NEW_TOKENS = 48
# Word dropout on the history requests while training (``learning.augment``). With plain
# greedy decoding it lifts adapter success on the bundled suite from 0.60 to 0.70
# (``adaptkit arena run --calibrate-tokens 0`` with and without ``--word-dropout 0``;
# docs/benchmarks.md).
ARENA_WORD_DROPOUT = 0.3
# How the arena trains each adapter (``adaptkit arena run``'s defaults). ``steps`` is a
# budget: ``StepPolicy`` gives small learning-curve points fewer. The adapter's shape
# is not here: it depends on the model (``KitLearner.lora_spec``).
# History answers that are a decision (an option picked, a label of the user's small
# set: ``learning.decisions``) are learned as that decision, with the choice term at
# this weight. Chosen on the hand-written development suite
# (benchmarks/suites/dev_learning.jsonl): its label users' decision tasks 4/11 -> 7/11;
# the bundled suite holds no decision, so its runs are exactly as before.
ARENA_CHOICE_WEIGHT = 1.0
# The KL anchor's weight when an arena adapter trains (``sft-kl`` ...): the online
# trainer's 10 (``TrainConfig.kl_weight``). 30 was tried: on the development suite
# (benchmarks/suites/dev_learning.jsonl) probe retention 0.969 -> 0.981, adapter
# 0.71 -> 0.76, but on the bundled suite adapter success 0.84 -> 0.48 and retention
# 0.971 -> 0.938, final adapters of one run each (benchmarks/results/README.md); 8
# anchor rows a step over 63 general prompts did not help on the development suite
# (retention 0.944, adapter 0.68).
ARENA_TRAIN = TrainConfig(
    steps=24,
    lr=4e-3,
    batch_size=4,
    word_dropout=ARENA_WORD_DROPOUT,
    choice_weight=ARENA_CHOICE_WEIGHT,
)
# Repetition control of every condition's answers (``adaptkit arena run
# --frequency-penalty`` ...). OpenAI's frequency penalty counts the answer's tokens only:
# on the bundled suite's final adapters it took looping answers from 8 to 1 of 514 and
# changed no score (``--frequency-penalty 0`` against the default; docs/arena.md).
ARENA_REPETITION = Repetition(frequency_penalty=0.5)
# Fields of a ``LoraSpec`` that replace those of the shape computed for the model.
LoraChanges = Mapping[str, Any]
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Learned:
    """What a learner produced for a user: registry version, its cost, its size."""

    user: str
    version: int
    train_seconds: float
    adapter_bytes: int
    examples: int


class Responder(Protocol):
    def answer(self, requests: Sequence[Request], *, max_new_tokens: int) -> list[str]: ...

    def prompt_tokens(self, prompt: Messages) -> int: ...


class Learner(Protocol):
    method: str

    def lora_spec(self) -> LoraSpec: ...

    def learn(self, user: str, history: Sequence[HistoryRecord]) -> Learned: ...


class KitResponder:
    """Answers through the bank's ``Engine`` over the kit's base model and registry.

    Every row decodes the same way: greedy, with the first tokens calibrated when
    ``calibration`` is given (``adaptkit.bank.calibration``), under ``repetition``
    control (``adaptkit.bank.repetition``), whatever its condition.

    A batch may mix the base model, several users and several versions of one user
    (each row pins its version): the arena answers every learning-curve point of
    every user in a few large batches, where one small batch per user and point paid
    the per-token overhead of generation over and over.
    """

    def __init__(
        self,
        kit: AdaptKit,
        *,
        calibration: Calibration | None = None,
        repetition: Repetition | None = None,
    ) -> None:
        self.kit = kit
        self.calibration = calibration
        self.repetition = repetition

    def answer(self, requests: Sequence[Request], *, max_new_tokens: int) -> list[str]:
        # The engine checks every row (known version, blob sha256, base) before computing.
        results = self.kit.engine.generate(
            requests,
            max_new_tokens=max_new_tokens,
            calibration=self.calibration,
            repetition=self.repetition,
        )
        return [result.text or "" for result in results]

    def prompt_tokens(self, prompt: Messages) -> int:
        return len(encode_prompt(self.kit.base.tokenizer, prompt))


@dataclass(frozen=True)
class StepPolicy:
    """Training steps for k history records: a fixed number of passes over the data,
    clamped to [min_steps, max_steps]. Learning-curve points with few records then
    cost few steps instead of the full budget."""

    epochs: float = 10.0
    min_steps: int = 6
    max_steps: int = 24

    @classmethod
    def for_budget(cls, max_steps: int) -> StepPolicy:
        return cls(min_steps=min(cls.min_steps, max_steps), max_steps=max_steps)

    def steps(self, records: int, batch_size: int) -> int:
        wanted = math.ceil(self.epochs * records / max(1, min(batch_size, records)))
        return max(self.min_steps, min(self.max_steps, wanted))


class KitLearner:
    """Trains through the toolkit's own path: ``AdaptKit.train`` + the run's registry."""

    def __init__(
        self,
        kit: AdaptKit,
        *,
        method: str = "sft",
        lora: LoraSpec | LoraChanges | None = None,
        config: TrainConfig | None = None,
        policy: StepPolicy | None = None,
        progress: bool = False,
    ) -> None:
        if method not in KIT_METHODS:
            raise InputError(f"--method {method!r} is not one of {', '.join(KIT_METHODS)}")
        self.kit = kit
        self.method = method
        self.lora = lora
        self.config = config or TrainConfig()
        self.policy = policy or StepPolicy.for_budget(self.config.steps)
        self.progress = progress
        self._anchors: list[tuple[str, str]] | None = None

    def anchors(self) -> list[tuple[str, str]]:
        """(request, the base model's own answer), computed once per learner."""
        if self._anchors is None:
            answers = self.kit.chat_many(
                list(ANCHOR_PROMPTS), user=None, max_new_tokens=ANCHOR_MAX_NEW_TOKENS
            )
            self._anchors = list(zip(ANCHOR_PROMPTS, answers, strict=True))
        return self._anchors

    def _replay(self, user: str, count: int) -> list[Interaction]:
        return [
            Interaction(user, (Message("user", request),), answer, source="anchor")
            for request, answer in self.anchors()[:count]
        ]

    def lora_spec(self) -> LoraSpec:
        """The adapter shape trained: the given spec; else the online trainer's shape for
        this model, with the fields given as ``LoraChanges`` replaced."""
        if isinstance(self.lora, LoraSpec):
            return self.lora
        shape = online_lora(self.kit.base.model.config.num_hidden_layers)
        return replace(shape, **self.lora) if self.lora else shape

    def learn(self, user: str, history: Sequence[HistoryRecord]) -> Learned:
        if not history:
            raise InputError(f"user {user!r} has no history records to learn from")
        steps = self.policy.steps(len(history), self.config.batch_size)
        config = replace(self.config, steps=steps)
        interactions = [record.interaction for record in history]
        if self.method == "sft-anchor":
            # One anchor per history record (at most all of them): the mix stays half
            # the user's own data however long the history is.
            interactions += self._replay(user, len(history))
        rule, kl_anchor = KIT_METHODS[self.method]
        version = self.kit.train(
            user,
            interactions,
            lora=self.lora_spec(),
            config=config,
            progress=self.progress,
            method=rule,
            # The online trainer's anchor: KL to the base on general prompts.
            kl_anchor=kl_anchor,
        )
        size = sum(f.stat().st_size for f in Path(version.blob_path).rglob("*") if f.is_file())
        return Learned(
            user=user,
            version=version.number,
            train_seconds=float(version.metrics.get("train_seconds", 0.0)),
            adapter_bytes=size,
            examples=int(version.metrics.get("examples", len(history))),
        )


class OnlineLearner:
    """The online protocol: each user's history streamed, in order, into ``OnlineTrainer``.

    Every history record becomes an answered request and an ``accept`` of its answer;
    at each learning-curve point the records that arrived since the last one are
    trained in one gated update (warm start, replay, KL anchor, probe gate), exactly
    as feedback arriving in a running app. The trainer owns a second copy of the base
    model: the arena's answers come from the kit's copy through the bank.
    """

    method = "online"

    def __init__(self, kit: AdaptKit, *, config: OnlineConfig | None = None) -> None:
        # Every record trains: nothing is held back, the gate checks general ability.
        self.kit = kit
        self.config = config or OnlineConfig(holdout_every=0)
        self._trainer: OnlineTrainer | None = None
        self._streamed: dict[str, int] = {}

    def lora_spec(self) -> LoraSpec:
        """The new users' adapter shape of the online trainer."""
        return online_lora(self.kit.base.model.config.num_hidden_layers)

    def trainer(self) -> OnlineTrainer:
        if self._trainer is None:
            base = load_base(self.kit.base_name, home=self.kit.home, quant=self.kit.quant)
            self._trainer = OnlineTrainer(
                self.kit.registry, base, base_name=self.kit.base_name, config=self.config
            )
        return self._trainer

    def learn(self, user: str, history: Sequence[HistoryRecord]) -> Learned:
        if not history:
            raise InputError(f"user {user!r} has no history records to learn from")
        streamed = self._streamed.get(user, 0)
        if not streamed and self._has_versions(user):
            raise InputError(
                f"user {user!r} already has adapter versions in {self.kit.home.root}: the "
                "online protocol starts from no adapter; use a fresh --home"
            )
        trainer = self.trainer()
        if len(history) < streamed:
            raise InputError(
                f"the online protocol streams history in order: {user!r} already sent "
                f"{streamed} records, asked to learn from the first {len(history)}"
            )
        for record in history[streamed:]:
            interaction = record.interaction
            messages = [{"role": m.role, "content": m.content} for m in interaction.messages]
            request = trainer.log.record_completion(user, messages, interaction.response or "")
            trainer.log.record(FeedbackEvent(user, "accept", request.id))
        self._streamed[user] = len(history)
        started = time.perf_counter()
        while (result := trainer.update(user)) is not None and trainer.log.pending(user).events:
            pass  # more than max_events arrived: one update per batch
        active = self.kit.registry.active_version(user)
        if active is None:
            reason = result.gate.reason if result and result.gate else "no update ran"
            raise InputError(f"no version of {user!r} passed the gate ({reason})")
        size = sum(f.stat().st_size for f in Path(active.blob_path).rglob("*") if f.is_file())
        return Learned(
            user=user,
            version=active.number,
            train_seconds=time.perf_counter() - started,
            adapter_bytes=size,
            examples=len(history),
        )

    def _has_versions(self, user: str) -> bool:
        try:
            return bool(self.kit.registry.versions(user))
        except UnknownUserError:
            return False

    def close(self) -> None:
        if self._trainer is not None:
            self._trainer.close()
