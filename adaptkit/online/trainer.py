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
version untouched; after it, both are recorded. ``start()`` runs updates in a
background thread (one slot, so updates are serial; generation elsewhere runs on
its own model and is never blocked).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import Tensor

from adaptkit.base_model import BaseModel
from adaptkit.online.events import EventBatch, FeedbackEvent
from adaptkit.online.feedback_log import FeedbackLog
from adaptkit.online.gate import Gate, GateResult, heldout_loss
from adaptkit.online.probes import ANCHOR_PROMPTS, ProbeSuite
from adaptkit.online.rules import Example, RuleContext, build_rule, history_examples
from adaptkit.online.slot import AdapterSlot
from adaptkit.online.steps import AnchorSet, NonFiniteLossError, OnlineConfig, run_steps
from adaptkit.prompting import generate
from adaptkit.registry import RETIRED, Registry, VersionInfo, sha256_file
from adaptkit.registry.blobs import ADAPTER_WEIGHTS
from adaptkit.training import LoraSpec

log = logging.getLogger(__name__)
HELD_OUT = "held-out"
RECENT_HELD_OUT = 16  # held-back answers the gate compares on
HOLDABLE = ("accept", "up", "edit", "pair")  # events that say what the right answer is


def online_lora(num_layers: int) -> LoraSpec:
    """New users' adapter shape: the MLPs of the top 40% of the layers, rank 8.

    On SmolLM2 (``benchmarks/online.py --targets ... --top-layers ...``, 10 rounds):
    all-linear on every layer learns the user as well (success 1.0, retention 1.0)
    but an update takes 11.9 s; q/v on the top 8 layers never learns them (success
    0.0: the gate refuses every update after the third, retention 0.89); the MLPs of
    the top 12 reach success 1.0 with retention 1.0 at 3.95 s. The top layers only,
    because that is what makes an update fast (``scoring.SplitForward`` caches
    everything below them). A user whose active version has another shape (e.g.
    ``adaptkit train``, all-linear) is warm-started in that shape.
    """
    return LoraSpec(
        rank=8,
        alpha=16.0,
        targets="gate_proj,up_proj,down_proj",
        top_layers=-(-num_layers * 2 // 5),
    )


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


def blob_ok(version: VersionInfo) -> bool:
    weights = Path(version.blob_path) / ADAPTER_WEIGHTS
    return weights.is_file() and sha256_file(weights) == version.blob_sha256


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
        self.rule = build_rule(self.config.method, beta=self.config.beta)
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
        self._wake = threading.Condition()
        self._dirty: list[str] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.failures: dict[str, str] = {}  # user -> last unexpected error (worker thread)

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
        """One update from ``user_id``'s pending events; None when there are none."""
        with self._lock:
            return self._update(user_id)

    def _update(self, user_id: str) -> UpdateResult | None:
        began = time.perf_counter()
        batch = self.log.pending(user_id, limit=self.config.max_events)
        if not batch.events:
            return None
        active = self.recheck_blob(user_id)
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
        self.slot.load(active, seed=self.config.seed)
        warm = self.slot.snapshot()
        reference_loss = heldout_loss(self.slot, heldout, self.config.max_length)
        mark = time.perf_counter()
        timings["warm_start"] = mark - began - timings["select"]
        try:
            step_losses = run_steps(
                self.slot,
                self.rule,
                lambda _step: selection.examples,
                self.config,
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
        staging = self.registry.blobs.staging_dir(user_id)
        try:
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
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- checks after the fact, and rollback -------------------------------------------

    def last_good(self, user_id: str, before: int) -> VersionInfo | None:
        """The newest earlier version that once served and whose blob still verifies."""
        for version in reversed(self.registry.versions(user_id)):
            if (
                version.number < before
                and version.status == RETIRED
                and version.metrics.get("gate_passed", True)
                and blob_ok(version)
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

    def recheck_blob(self, user_id: str) -> VersionInfo | None:
        """The active version, after rolling back if its blob no longer verifies."""
        active = self.registry.active_version(user_id)
        if active is not None and not blob_ok(active):
            return self._roll_back(user_id, active, "its blob is missing or fails its sha256")
        return active

    def recheck(self, user_id: str) -> VersionInfo | None:
        """Re-run the checks on the active version; roll back to the last good one on failure."""
        with self._lock:
            active = self.recheck_blob(user_id)
            if active is None:
                return None
            self.slot.load(active)
            retention = self.gate.probes.retention(self.slot)
            if retention < self.gate.config.min_retention:
                problem = f"probe retention {retention:.2f} < {self.gate.config.min_retention:.2f}"
                return self._roll_back(user_id, active, problem)
            return active

    # -- background worker -----------------------------------------------------------

    def notify(self, user_id: str) -> None:
        """Tell the worker ``user_id`` has new feedback (cheap; call after ``log.record``)."""
        with self._wake:
            if user_id not in self._dirty:
                self._dirty.append(user_id)
            self.failures.pop(user_id, None)
            self._wake.notify()

    def start(self, poll_seconds: float = 1.0) -> OnlineTrainer:
        """Run updates in a daemon thread until ``stop()``; also picks up events it missed."""
        if self._thread is not None:
            return self
        self._stopping = False
        self._thread = threading.Thread(
            target=self._work, args=(poll_seconds,), name="adaptkit-online", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _next_user(self, poll_seconds: float) -> str | None:
        with self._wake:
            if not self._dirty and not self._stopping:
                self._wake.wait(poll_seconds)
            if self._stopping:
                return None
            if not self._dirty:
                # Events recorded by other processes, or before a restart.
                self._dirty = [u for u in self.log.users_with_pending() if u not in self.failures]
            return self._dirty.pop(0) if self._dirty else ""

    def _work(self, poll_seconds: float) -> None:
        while (user_id := self._next_user(poll_seconds)) is not None:
            if not user_id:
                continue
            try:
                result = self.update(user_id)
            except Exception as error:  # keep serving other users; remember why
                log.exception("online update of %s failed", user_id)
                self.failures[user_id] = f"{type(error).__name__}: {error}"
                continue
            if result is not None and self.log.pending(user_id, limit=1).events:
                self.notify(user_id)  # more arrived while this step ran

    def close(self) -> None:
        """Stop the worker and take the LoRA layers off the base model."""
        self.stop()
        with self._lock:
            self.slot.model.unload()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until no user has pending events (or ``timeout``); True when idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [u for u in self.log.users_with_pending() if u not in self.failures]
            if not pending and not self._lock.locked():
                return True
            time.sleep(0.05)
        return False
