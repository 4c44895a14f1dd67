"""The scheduler: one thread owns the engine and decodes every request in flight together.

Iteration-level scheduling (as vLLM, TGI and LoRAX do): requests wait in a bounded
queue; between two decode steps the waiting ones join the running batch (up to
``max_batch`` rows; in groups while the batch is busy, ``_joining_now``) through the
engine's ``DecodeSession``, each row with its own adapters; a row that ends, or whose
client went away, leaves at once. HTTP handlers run on the event loop and talk to the
thread through ``Job``s: ``submit`` from the loop, results come back as events on the
job's asyncio queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from adaptkit.bank import DecodeSession, Engine, Sampling, SessionRow
from adaptkit.errors import AdaptkitError
from adaptkit.router import Plan, Request
from adaptkit.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)


# How long (in decode steps) a request waits at most to join a busy batch with others.
JOIN_WAIT_STEPS = 3


class QueueFullError(AdaptkitError):
    """The waiting queue is full: try again after ``retry_after`` seconds."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(
            f"the server has {waiting} requests waiting (its --max-queue); retry after "
            f"{retry_after} s"
        )


def use_threads(count: int) -> None:
    """Set the calling thread's torch threads.

    OpenMP's thread count belongs to the thread that sets it, but torch sets it once
    more on a thread's first op, to the process-wide default: asking first runs that
    first-use setting, so this one stays.
    """
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


@dataclass(frozen=True)
class DecodeThreads:
    """The decoding thread's torch threads: ``alone`` while no online update runs,
    ``shared`` while one does (its trainer has the other cores)."""

    alone: int
    shared: int


@dataclass(frozen=True)
class Started:
    plan: Plan
    prompt_tokens: int


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    text: str
    finish_reason: str  # stop | length
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    error: Exception


Event = Started | Delta | Finished | Failed


@dataclass(eq=False)
class Job:
    """One request's way through the scheduler."""

    request: Request
    sampling: Sampling
    stops: list[str]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set by the handler when its client goes away
    queued_at: float = field(default_factory=time.perf_counter)
    # Scheduler-side state.
    row: SessionRow | None = None
    sent: int = 0  # characters of the answer already sent as deltas
    first_token_at: float | None = None

    def emit(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled = True


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        metrics: ServeMetrics,
        *,
        max_batch: int = 32,
        max_queue: int = 256,
        threads: DecodeThreads | None = None,
        training: Callable[[], bool] = lambda: False,
    ) -> None:
        """``threads``: None leaves torch's; ``training``: whether an online update runs
        now (decoding then takes ``threads.shared``)."""
        self.engine = engine
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.join_group = max(1, max_batch // 8)
        self.session: DecodeSession = engine.session()
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="adaptkit-serve", daemon=True)
        self._step_seconds = 0.05  # running mean, for Retry-After
        self.threads = threads
        self.training = training
        self.alive = False

    def start(self) -> Scheduler:
        self.alive = True
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(30)
        self.alive = False

    def busy(self) -> bool:
        """Whether the batch is at least half full, waiting requests counted (read from
        other threads: a snapshot, good for pacing, not for counting)."""
        return len(self._running) + len(self._waiting) >= max(1, self.max_batch // 2)

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises ``QueueFullError`` (nothing queued) when the queue is full."""
        with self._wake:
            if len(self._waiting) >= self.max_queue:
                # Roughly when a batch's worth of rows will have left.
                retry = max(1, round(self._step_seconds * job.sampling.max_new_tokens))
                raise QueueFullError(len(self._waiting), retry)
            self._waiting.append(job)
            self.metrics.queue_depth.set(len(self._waiting))
            self._wake.notify()

    # -- the thread ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._running:
                    self._wake.wait()
                if self._stopping:
                    break
                room = self.max_batch - len(self._running) if self._joining_now() else 0
                joining = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                self.metrics.queue_depth.set(len(self._waiting))
            try:
                self._admit([job for job in joining if not job.cancelled])
                self._retire([job for job in self._running if job.cancelled], None)
                if self._running:
                    self._share_cores()
                    self._step()
            except Exception as error:  # a bug or a broken blob mid-batch: fail the batch
                log.exception("decode step failed; failing the rows in flight")
                for job in self._running:
                    job.emit(Failed(error))
                self.session.close()
                self._running = []
            self.metrics.batch_size.set(len(self._running))
        self.session.close()
        with self._wake:
            for job in [*self._waiting, *self._running]:
                job.emit(Failed(RuntimeError("the server is shutting down")))

    def _joining_now(self) -> bool:
        """Whether the waiting requests join before the next step (called under the lock).

        Each join is a forward of its own (the joiners' prefill), which on a CPU costs
        several decode steps for a handful of rows. So while the batch is at least half
        full, joiners gather into groups (as vLLM's scheduler delay does): they join once
        ``join_group`` wait or the oldest has waited ``JOIN_WAIT_STEPS`` steps.
        """
        if not self._waiting:
            return False
        if len(self._running) < self.max_batch // 2 or len(self._waiting) >= self.join_group:
            return True
        waited = time.perf_counter() - self._waiting[0].queued_at
        return waited >= JOIN_WAIT_STEPS * self._step_seconds

    def _share_cores(self) -> None:
        """Every core while the trainer is idle; a share while an update runs, so the
        update is not slowed by decoding's threads (checked each step: an update starts
        or ends within one step of decoding)."""
        if self.threads is None:
            return
        use_threads(self.threads.shared if self.training() else self.threads.alone)
        self.metrics.decode_threads.set(torch.get_num_threads())

    def _admit(self, joining: list[Job]) -> None:
        if not joining:
            return
        self._share_cores()
        outcome = self.session.admit([(job.request, job.sampling) for job in joining])
        for job, row in zip(joining, outcome, strict=True):
            if isinstance(row, AdaptkitError):
                job.emit(Failed(row))
                self.metrics.requests.labels("error").inc()
                continue
            job.row = row
            self._running.append(job)
            job.emit(Started(row.plan, row.prompt_tokens))
        stats = self.engine.bank.stats()
        self.metrics.cache_hits.set(stats.hits)
        self.metrics.cache_loads.set(stats.misses)

    def _step(self) -> None:
        began = time.perf_counter()
        self.session.step()
        self._step_seconds = 0.9 * self._step_seconds + 0.1 * (time.perf_counter() - began)
        self.metrics.batch_rows.observe(len(self._running))
        self.metrics.output_tokens.inc(len(self._running))
        now = time.perf_counter()
        done: list[tuple[Job, str, str]] = []
        for job in self._running:
            row = job.row
            if job.first_token_at is None:
                job.first_token_at = now
                self.metrics.ttft.observe(now - job.queued_at)
            text, hit = self._text(job)
            if hit:
                done.append((job, text, "stop"))
            elif row.finish is not None:
                done.append((job, text, "stop" if row.finish == "stop" else "length"))
            else:
                # Trailing whitespace waits for what follows: the answer's end is stripped,
                # so the chunks add up to exactly the final text.
                hold = max((len(s) for s in job.stops), default=1) - 1
                self._send(job, text.rstrip(), hold=hold)
        for job, text, reason in done:
            self._send(job, text, hold=0, final=True)
            job.emit(Finished(text, reason, len(job.row.tokens)))
            self.metrics.requests.labels("ok").inc()
            self.metrics.latency.observe(now - job.queued_at)
        self._retire([job for job, _, _ in done], "ended")

    def _text(self, job: Job) -> tuple[str, bool]:
        """The answer so far (as ``Engine.generate`` words it), cut at a stop string."""
        text = self.engine.base.tokenizer.decode(job.row.tokens, skip_special_tokens=True)
        text = text.lstrip()
        cuts = [text.find(stop) for stop in job.stops if stop in text]
        if cuts:
            return text[: min(cuts)].rstrip(), True
        return (text.rstrip() if job.row.finish else text), False

    def _send(self, job: Job, text: str, *, hold: int, final: bool = False) -> None:
        """Send what is new of ``text``, keeping back a possible stop string's start and a
        half-decoded character."""
        ready = len(text) - hold
        # Mid-answer only: the last answer is sent whole, as the non-streamed one is.
        while not final and ready > job.sent and text[ready - 1] == "\ufffd":
            ready -= 1
        if ready > job.sent:
            job.emit(Delta(text[job.sent : ready]))
            job.sent = ready

    def _retire(self, jobs: list[Job], why: str | None) -> None:
        if not jobs:
            return
        rows = [job.row for job in jobs if job.row is not None and job.row.finish is None]
        if rows:
            self.session.retire(rows)
        leaving = {id(job) for job in jobs}
        self._running = [job for job in self._running if id(job) not in leaving]
        if why is None:
            self.metrics.requests.labels("cancelled").inc(len(jobs))
