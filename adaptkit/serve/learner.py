"""Learning while serving: an ``OnlineWorker`` beside the server, on its own base copy.

The trainer loads in a background thread (the server answers meanwhile); then the
worker's thread turns each user's pending feedback into gated versions. The server
never trains and the trainer never serves: they meet in the registry, where a
promoted version is the user's active one, so the next request is planned on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from adaptkit.base_model import load_base
from adaptkit.feedback import FeedbackLog
from adaptkit.gate import ProbeSuite
from adaptkit.home import Home
from adaptkit.online import OnlineConfig, OnlineTrainer, OnlineWorker, UpdateResult
from adaptkit.registry import Registry
from adaptkit.serve.metrics import ServeMetrics
from adaptkit.serve.scheduler import use_threads

log = logging.getLogger(__name__)


class Updates:
    """Wakes the requests that wait for feedback to be learned (``GET
    /v1/feedback/{id}?wait=S``) when an update ends, instead of their polling.

    ``since()`` runs on the event loop and returns the event the next update sets: take
    it *before* reading the state, so an update that ends in between still wakes the
    reader. ``notify()`` runs on the trainer's thread and crosses to the loop.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next: asyncio.Event | None = None

    def since(self) -> asyncio.Event:
        if self._next is None:
            self._loop, self._next = asyncio.get_running_loop(), asyncio.Event()
        return self._next

    def notify(self) -> None:
        if self._loop is not None:
            # A loop already closed (the server stopping) has no reader left to wake.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        if self._next is not None:
            fired, self._next = self._next, None
            fired.set()


class LearningBudget:
    """How much of the time the trainer may compute while serving is busy.

    On a CPU an update takes cores from decoding (the scheduler splits them while one
    runs). While the batch is busy (``busy()``: at least half full, waiting requests
    counted), an update of u seconds is followed by a pause of u * (1 - share) / share
    before the next one starts, so training takes at most ``share`` of that time; the
    pause ends early as soon as the batch is no longer busy. Feedback then waits
    longer under heavy load, and never more than the backlog at that rate.
    """

    def __init__(self, share: float, busy: Callable[[], bool]) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"LearningBudget: share must be in (0, 1], got {share}")
        self.share = share
        self.busy = busy
        self._resume_at = 0.0  # perf_counter time before which a busy batch keeps its cores

    def wait(self, closed: threading.Event, check_seconds: float = 0.05) -> None:
        """Return when an update may start (or ``closed`` is set)."""
        while self.busy() and time.perf_counter() < self._resume_at and not closed.is_set():
            closed.wait(check_seconds)

    def spent(self, seconds: float) -> None:
        """An update just took ``seconds`` (a call that found nothing to train, a few
        milliseconds, never shortens the pause an earlier update earned)."""
        pause = seconds * (1.0 - self.share) / self.share
        self._resume_at = max(self._resume_at, time.perf_counter() + pause)


class _Observed:
    """The trainer as the worker sees it (``update``, ``log``, ``busy``), timing updates
    and keeping them within the learning budget."""

    def __init__(
        self,
        trainer: OnlineTrainer,
        metrics: ServeMetrics,
        threads: int,
        budget: LearningBudget,
        closed: threading.Event,
        on_update: Callable[[], None],
    ) -> None:
        self.trainer = trainer
        self.log = trainer.log
        self.metrics = metrics
        self.threads = threads
        self.budget = budget
        self.closed = closed
        self.on_update = on_update
        self.in_flight = False  # an update runs now (decoding gives up cores meanwhile)

    @property
    def busy(self) -> bool:
        return self.trainer.busy

    def update(self, user_id: str) -> UpdateResult | None:
        if self.threads:
            use_threads(self.threads)
        self.budget.wait(self.closed)  # counted in the events' `wait` stage
        began = time.perf_counter()
        started = datetime.now(timezone.utc)
        pending = self.log.pending(user_id, limit=self.trainer.config.max_events).events
        self.in_flight = True
        try:
            result = self.trainer.update(user_id)
        finally:
            self.in_flight = False
            self.budget.spent(time.perf_counter() - began)
        if result is None:
            return None
        self.on_update()
        self.metrics.update_seconds.observe(time.perf_counter() - began)
        if result.version is None:
            return result
        verdict = "promoted" if result.promoted else "refused"
        self.metrics.versions.labels(verdict).inc()
        now = datetime.now(timezone.utc)
        committed = [
            _utc(e.created_at)
            for e in pending
            if e.created_at is not None and e.id in result.outcomes
        ]
        for created in committed:
            self.metrics.feedback_to_version.observe((now - created).total_seconds())
        if committed:
            wait = (started - min(committed)).total_seconds()
            self.metrics.update_stage.labels("wait").observe(max(0.0, wait))
        for stage, seconds in result.timings.items():
            self.metrics.update_stage.labels(stage).observe(seconds)
        return result


def _utc(created: datetime) -> datetime:
    """SQLite gives naive UTC datetimes back."""
    return created if created.tzinfo is not None else created.replace(tzinfo=timezone.utc)


class Learner:
    """The online worker of one server; ``notify(user)`` after each feedback commit."""

    def __init__(
        self,
        registry: Registry,
        home: Home,
        base_name: str,
        metrics: ServeMetrics,
        *,
        quant: str = "none",
        config: OnlineConfig | None = None,
        probes: ProbeSuite | None = None,
        poll_seconds: float = 1.0,
        threads: int = 0,
        budget: LearningBudget | None = None,
        on_update: Callable[[], None] = lambda: None,
    ) -> None:
        """``config``, ``probes``: the online trainer's (``adaptkit.online``); None: its
        defaults. ``threads``: the trainer's torch threads (0: torch's). ``budget``: its
        share of a busy server's time (None: no limit). ``on_update``: called on the
        trainer's thread after each update that consumed events."""
        self.registry = registry
        self.log = FeedbackLog(registry)
        self.metrics = metrics
        self.worker: OnlineWorker | None = None
        self._trainer: OnlineTrainer | None = None
        self._observed: _Observed | None = None
        self.error: str | None = None
        self.threads = threads
        self.budget = budget or LearningBudget(1.0, lambda: False)
        self.on_update = on_update
        self._args = (home, base_name, quant, config, probes, poll_seconds)
        self._loader = threading.Thread(target=self._load, name="adaptkit-learner", daemon=True)
        self._closed = threading.Event()

    def start(self) -> Learner:
        self._loader.start()
        return self

    @property
    def ready(self) -> bool:
        return self.worker is not None

    @property
    def training(self) -> bool:
        """Whether the trainer computes now: an update, or its start (loading the base,
        generating the probes' base answers)."""
        if self._observed is None:
            return self.error is None and not self._closed.is_set()
        return self._observed.in_flight

    def _load(self) -> None:
        home, base_name, quant, config, probes, poll_seconds = self._args
        if self.threads:
            use_threads(self.threads)
        try:
            base = load_base(base_name, home=home, quant=quant)
            trainer = OnlineTrainer(
                self.registry, base, base_name=base_name, config=config, probes=probes
            )
        except Exception as error:
            log.exception("the online trainer could not start")
            self.error = f"{type(error).__name__}: {error}"
            return
        self._observed = _Observed(
            trainer, self.metrics, self.threads, self.budget, self._closed, self.on_update
        )
        worker = OnlineWorker(self._observed, poll_seconds=poll_seconds)
        self._trainer = trainer
        if not self._closed.is_set():
            self.worker = worker.start()

    def notify(self, user_id: str) -> None:
        """A user has new feedback (if the trainer is still loading, its first poll finds it)."""
        if self.worker is not None:
            self.worker.notify(user_id)

    def close(self) -> None:
        self._closed.set()
        self._loader.join(60)
        if self.worker is not None:
            self.worker.stop(60)
            self.worker = None
        if self._trainer is not None:
            self._trainer.close()
            self._trainer = None
