"""``OnlineTrainer``: turns each user's pending feedback into a gated new adapter version.

One update of a user (``update``):

1. take every pending event of the user (up to ``max_events``: what arrived while
   the previous step ran is coalesced into this one);
2. hold back every ``holdout_every``-th event for the gate, let the rule select the rest;
3. warm-start the slot from the user's active version (blob verified; a broken one
   is rolled back first), train a few steps with replay and anchors;
4. gate the result; publish it as the next version, active if the gate passed, else a
   candidate with the reason; the events are marked consumed in that same commit.

A crash anywhere before that commit leaves the events pending and the active
version untouched; after it, both are recorded. Updates are serial (one slot);
``OnlineWorker`` runs them in a background thread, and generation elsewhere runs on
its own model and is never blocked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torch import Tensor

from adaptkit.base_model import BaseModel
from adaptkit.errors import BlobIntegrityError
from adaptkit.feedback import EventBatch, FeedbackEvent, FeedbackLog
from adaptkit.gate import Gate, GateResult, ProbeSuite, heldout_loss
from adaptkit.learning import (
    ANCHOR_PROMPTS,
    AdapterSlot,
    AnchorSet,
    Example,
    LoraSpec,
    NonFiniteLossError,
    RuleContext,
    build_rule,
    history_examples,
    online_lora,
    run_steps,
)
from adaptkit.online.config import OnlineConfig
from adaptkit.prompting import generate
from adaptkit.registry import RETIRED, Registry, VersionInfo, lease_holder

log = logging.getLogger(__name__)
HELD_OUT = "held-out"
RECENT_HELD_OUT = 16  # held-back answers the gate compares on
HOLDABLE = ("accept", "up", "edit", "pair")  # events that say what the right answer is
# A lease outlives any one update (seconds to minutes); a trainer that dies frees the
# user when it expires.
LEASE_SECONDS = 600.0


@dataclass(frozen=True)
class UpdateResult:
    user_id: str
    version: VersionInfo | None  # None: nothing to train on, or the update was rejected
    gate: GateResult | None
    outcomes: dict[int, str]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds

    @property
    def promoted(self) -> bool:
        return self.version is not None and self.gate is not None and self.gate.passed


def _digest(events: tuple[FeedbackEvent, ...]) -> str:
    payload = [[e.id, e.kind, e.request_id, e.payload()] for e in events]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class OnlineTrainer:
    """Owns a base model (its own copy: it trains on it), one LoRA slot, probes and a gate."""

    def __init__(
        self,
        registry: Registry,
        base: BaseModel,
        *,
        base_name: str | None = None,
        config: OnlineConfig | None = None,
        lora: LoraSpec | None = None,
        probes: ProbeSuite | None = None,
        gate: Gate | None = None,
        anchor_prompts: tuple[str, ...] = ANCHOR_PROMPTS,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.registry = registry
        self.log = FeedbackLog(registry)
        self.base = base
        self.base_name = base_name or base.name
        self.config = config or OnlineConfig()
        self.rule = build_rule(
            self.config.method, beta=self.config.beta, choice_weight=self.config.choice_weight
        )
        self.slot = AdapterSlot(base, lora or online_lora(base.model.config.num_hidden_layers))
        suite = gate.probes if gate is not None else (probes or ProbeSuite())
        if suite.base_accuracy is None:  # not prepared on this base yet
            suite.prepare(self.slot)
        self.gate = gate or Gate(suite)
        self.anchors = AnchorSet.build(
            self.slot, anchor_prompts, self.config.max_length, self.config.anchor_tokens
        )
        self.on_step = on_step
        self._lock = threading.Lock()  # one slot: one update at a time
        # Trainers sharing a registry never train one user at once (Registry.try_lease).
        self.holder = lease_holder(f"trainer-{id(self):x}")

    # -- one update ------------------------------------------------------------------

    def _teacher(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        with self.slot.model.disable_adapter():
            return generate(
                self.slot.model,
                self.base.tokenizer,
                conversations,
                max_new_tokens=self.config.teacher_tokens,
            )

    def _split(self, batch: EventBatch) -> tuple[list[FeedbackEvent], list[FeedbackEvent]]:
        every = self.config.holdout_every
        held = [e for e in batch.events if every and e.kind in HOLDABLE and e.id % every == 0]
        train = [e for e in batch.events if e not in held]
        return train, held

    def update(self, user_id: str) -> UpdateResult | None:
        """One update from ``user_id``'s pending events; None when there are none, or
        when another trainer (any process, any machine) holds the user's lease."""
        with (
            self._lock,
            self.registry.lease(user_id, holder=self.holder, seconds=LEASE_SECONDS) as mine,
        ):
            return self._update(user_id) if mine else None

    def _update(self, user_id: str) -> UpdateResult | None:
        began = time.perf_counter()
        batch = self.log.pending(user_id, limit=self.config.max_events)
        if not batch.events:
            return None
        active, weights = self._checked_active(user_id)
        train_events, held_events = self._split(batch)
        context = RuleContext(
            notes=self.log.notes(user_id),
            history=history_examples(self.log.trained(user_id)),
            teacher=self._teacher,
        )
        selection = self.rule.select(
            EventBatch(user_id, tuple(train_events), batch.requests), context
        )
        outcomes = {**selection.outcomes, **{e.id: HELD_OUT for e in held_events}}
        if not selection.examples:
            self.log.settle(outcomes, rejected=False)
            return UpdateResult(user_id, None, None, outcomes, seconds=time.perf_counter() - began)

        timings = {"select": time.perf_counter() - began}
        # The most recent held-back answers: what the user wants now, at a cost that
        # does not grow with a lifelong history.
        heldout = (
            history_examples(self.log.held_out(user_id))
            + history_examples(EventBatch(user_id, tuple(held_events), batch.requests))
        )[-RECENT_HELD_OUT:]
        if active is None:
            self.slot.reset(seed=self.config.seed)
        else:
            self.slot.load(active, weights)
        warm = self.slot.snapshot()
        reference_loss = heldout_loss(self.slot, heldout, self.config.max_length)
        mark = time.perf_counter()
        timings["warm_start"] = mark - began - timings["select"]
        try:
            step_losses = run_steps(
                self.slot,
                self.rule,
                lambda _step: selection.examples,
                self.config.step_config(),
                replay_pool=context.history,
                anchors=self.anchors,
                on_step=self.on_step,
            )
        except NonFiniteLossError as error:
            rejected = {event_id: f"rejected: {error}" for event_id in outcomes}
            self.log.settle(rejected, rejected=True)
            return UpdateResult(
                user_id, None, None, rejected, error=str(error), seconds=time.perf_counter() - began
            )
        timings["train"] = time.perf_counter() - mark
        mark = time.perf_counter()
        verdict = self._gate(warm, heldout, reference_loss)
        timings["gate"] = time.perf_counter() - mark
        mark = time.perf_counter()
        version = self._publish(
            user_id, active, batch, outcomes, verdict, step_losses, len(selection.examples)
        )
        timings["publish"] = time.perf_counter() - mark
        return UpdateResult(
            user_id,
            version,
            verdict,
            outcomes,
            step_losses,
            time.perf_counter() - began,
            timings=timings,
        )

    def _gate(
        self, warm: list[Tensor], heldout: list[Example], reference_loss: float | None
    ) -> GateResult:
        """Gate the slot's update; a refused one is halved toward ``warm`` and re-checked.

        A backtracking line search: a step that costs general ability is shortened (up
        to ``backtrack`` halvings) rather than thrown away, so a user keeps moving toward
        their feedback at the pace retention allows. Refused at every scale, the whole
        update is what stays a candidate, with its own verdict.
        """
        max_length = self.config.max_length
        verdict = self.gate.check(self.slot, heldout, reference_loss, max_length)
        if verdict.passed or not self.config.backtrack:
            return verdict
        trained, fraction = self.slot.snapshot(), 1.0
        for _ in range(self.config.backtrack):
            fraction /= 2
            self.slot.interpolate(warm, trained, fraction)
            scaled = self.gate.check(self.slot, heldout, reference_loss, max_length)
            if scaled.passed:
                return scaled.with_note(f"update scaled by {fraction:g} to pass")
        self.slot.restore(trained)
        return verdict.with_note(f"also refused scaled down to {fraction:g}")

    def _publish(self, user_id, active, batch, outcomes, verdict, step_losses, n_examples):
        with self.registry.staging(user_id) as staging:
            self.slot.save(staging)
            metrics = {
                **verdict.metrics(),
                "events": len(batch.events),
                "examples": n_examples,
                "steps": len(step_losses),
                "loss_first": step_losses[0],
                "loss_last": step_losses[-1],
            }
            return self.registry.publish(
                user_id,
                staging,
                method=self.rule.name,
                base_model=self.base_name,
                data_digest=_digest(batch.events),
                metrics=metrics,
                config={
                    "online": asdict(self.config),
                    "lora_r": self.slot.config.r,
                    "lora_targets": sorted(self.slot.config.target_modules),
                },
                parent=active.number if active else None,
                activate=verdict.passed,
                status_reason=verdict.reason,
                in_transaction=lambda session, row: self.log.consume_in(session, outcomes, row.id),
            )

    # -- checks after the fact, and rollback -------------------------------------------

    def last_good(self, user_id: str, before: int) -> VersionInfo | None:
        """The newest earlier version that once served and whose blob still verifies."""
        for version in reversed(self.registry.versions(user_id)):
            if (
                version.number < before
                and version.status == RETIRED
                and version.metrics.get("gate_passed", True)
                and self.registry.blob_problem(version) is None
            ):
                return version
        return None

    def _roll_back(self, user_id: str, bad: VersionInfo, problem: str) -> VersionInfo | None:
        good = self.last_good(user_id, bad.number)
        if good is None:
            self.registry.set_status_reason(
                user_id, bad.number, f"failed a later check ({problem}); no earlier good version"
            )
            log.error("user %s v%d: %s; nothing to roll back to", user_id, bad.number, problem)
            return None
        log.warning(
            "user %s: rolling back v%d -> v%d: %s", user_id, bad.number, good.number, problem
        )
        return self.registry.rollback(
            user_id,
            bad.number,
            to=good.number,
            reason=f"rolled back to v{good.number}: {problem}",
        )

    def _checked_active(self, user_id: str) -> tuple[VersionInfo | None, bytes | None]:
        """The active version and its verified weights, after rolling back to the last
        good version if its blob is missing or fails its sha256."""
        active = self.registry.active_version(user_id)
        while active is not None:
            try:
                return active, self.registry.read_weights(active)
            except BlobIntegrityError:
                active = self._roll_back(user_id, active, "its blob is missing or fails its sha256")
        return None, None

    def recheck(self, user_id: str) -> VersionInfo | None:
        """Re-run the checks on the active version; roll back to the last good one on failure."""
        with self._lock:
            active, weights = self._checked_active(user_id)
            if active is None:
                return None
            self.slot.load(active, weights)
            retention = self.gate.probes.retention(self.slot)
            if retention < self.gate.config.min_retention:
                problem = f"probe retention {retention:.2f} < {self.gate.config.min_retention:.2f}"
                return self._roll_back(user_id, active, problem)
            return active

    @property
    def busy(self) -> bool:
        """Whether an update is running now."""
        return self._lock.locked()

    def close(self) -> None:
        """Take the LoRA layers off the base model (stop its ``OnlineWorker`` first)."""
        with self._lock:
            self.slot.model.unload()
