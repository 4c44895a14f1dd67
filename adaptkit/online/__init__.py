"""Online learning from interaction feedback, without forgetting.

log = FeedbackLog(registry)
request = log.record_request("alice", "How do I get to work?", "Take the car.")
log.record(FeedbackEvent("alice", "edit", request.id, text="Cycle: 15 minutes."))
trainer = OnlineTrainer(registry, load_base(...))   # its own copy of the base model
trainer.update("alice")            # or trainer.start() + trainer.notify("alice")
"""

from adaptkit.online.events import EVENT_KINDS, EventBatch, FeedbackError, FeedbackEvent, Request
from adaptkit.online.feedback_log import FeedbackLog
from adaptkit.online.gate import Gate, GateConfig, GateResult
from adaptkit.online.probes import ANCHOR_PROMPTS, DEFAULT_PROBES, Probe, ProbeSuite
from adaptkit.online.rules import RULES, Example, UpdateRule, build_rule
from adaptkit.online.steps import NonFiniteLossError, OnlineConfig
from adaptkit.online.trainer import OnlineTrainer, UpdateResult

__all__ = [
    "ANCHOR_PROMPTS",
    "DEFAULT_PROBES",
    "EVENT_KINDS",
    "RULES",
    "EventBatch",
    "Example",
    "FeedbackError",
    "FeedbackEvent",
    "FeedbackLog",
    "Gate",
    "GateConfig",
    "GateResult",
    "NonFiniteLossError",
    "OnlineConfig",
    "OnlineTrainer",
    "Probe",
    "ProbeSuite",
    "Request",
    "UpdateResult",
    "UpdateRule",
    "build_rule",
]
