"""``OnlineWorker``: runs an ``OnlineTrainer``'s updates in a background thread.

    worker = OnlineWorker(trainer).start()
    log.record(event); worker.notify(event.user_id)    # the update runs soon after
    worker.stop()

Users with new feedback are updated one at a time, in the order they were notified;
feedback recorded by other processes (or before a restart) is found by polling the
log. A user whose update failed unexpectedly is left alone (``failures`` says why)
until they are notified again; the other users keep being served.
"""

from __future__ import annotations

import logging
import threading
import time

from adaptkit.online.trainer import OnlineTrainer

log = logging.getLogger(__name__)


class OnlineWorker:
    """One daemon thread that turns pending feedback into updates until ``stop()``."""

    def __init__(self, trainer: OnlineTrainer, *, poll_seconds: float = 1.0) -> None:
        self.trainer = trainer
        self.poll_seconds = poll_seconds
        self.failures: dict[str, str] = {}  # user -> last unexpected error
        self._wake = threading.Condition()
        self._dirty: list[str] = []
        self._stopping = False
        self._thread: threading.Thread | None = None

    def notify(self, user_id: str) -> None:
        """Tell the worker ``user_id`` has new feedback (cheap; call after ``log.record``)."""
        with self._wake:
            if user_id not in self._dirty:
                self._dirty.append(user_id)
            self.failures.pop(user_id, None)
            self._wake.notify()

    def start(self) -> OnlineWorker:
        """Start the thread (a second call does nothing)."""
        if self._thread is not None:
            return self
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="adaptkit-online", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the update in progress, if any."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until no user has pending events (or ``timeout``); True when idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [u for u in self.trainer.log.users_with_pending() if u not in self.failures]
            if not pending and not self.trainer.busy:
                return True
            time.sleep(0.05)
        return False

    def _next_user(self) -> str | None:
        with self._wake:
            if not self._dirty and not self._stopping:
                self._wake.wait(self.poll_seconds)
            if self._stopping:
                return None
            if not self._dirty:
                # Events recorded by other processes, or before a restart.
                pending = self.trainer.log.users_with_pending()
                self._dirty = [u for u in pending if u not in self.failures]
            return self._dirty.pop(0) if self._dirty else ""

    def _work(self) -> None:
        while (user_id := self._next_user()) is not None:
            if not user_id:
                continue
            try:
                result = self.trainer.update(user_id)
            except Exception as error:  # keep serving other users; remember why
                log.exception("online update of %s failed", user_id)
                self.failures[user_id] = f"{type(error).__name__}: {error}"
                continue
            if result is not None and self.trainer.log.pending(user_id, limit=1).events:
                self.notify(user_id)  # more arrived while this update ran


__all__ = ["OnlineWorker"]
