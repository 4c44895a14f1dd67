"""Online learning from interaction feedback, without forgetting.

    log = FeedbackLog(registry)                          # adaptkit.feedback
    done = log.record_completion("alice", "How do I get to work?", "Take the car.")
    log.record(FeedbackEvent("alice", "edit", done.id, text="Cycle: 15 minutes."))
    trainer = OnlineTrainer(registry, load_base(...))    # its own copy of the base model
    trainer.update("alice")                              # one gated update, now
    worker = OnlineWorker(trainer).start()               # or: updates in a thread
    worker.notify("alice")

The trainer conducts an update: the learning engine (``adaptkit.learning``) trains,
the gate (``adaptkit.gate``) judges, the registry publishes.
"""

from adaptkit.online.config import OnlineConfig
from adaptkit.online.trainer import OnlineTrainer, UpdateResult
from adaptkit.online.worker import OnlineWorker

__all__ = ["OnlineConfig", "OnlineTrainer", "OnlineWorker", "UpdateResult"]
