"""Feedback: what users said about answers, validated, and durably logged.

    log = FeedbackLog(registry)
    done = log.record_completion("alice", "How do I get to work?", "Take the car.")
    log.record(FeedbackEvent("alice", "edit", done.id, text="Cycle: 15 minutes."))

The rows live in the registry's database (``adaptkit.registry``), so an event is
marked consumed in the same transaction that publishes the version trained on it.
"""

from adaptkit.feedback.events import (
    EVENT_KINDS,
    Completion,
    EventBatch,
    FeedbackError,
    FeedbackEvent,
    events_from_log,
)
from adaptkit.feedback.log import FeedbackLog

__all__ = [
    "EVENT_KINDS",
    "Completion",
    "EventBatch",
    "FeedbackError",
    "FeedbackEvent",
    "FeedbackLog",
    "events_from_log",
]
