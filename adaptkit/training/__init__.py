"""Training a user's adapter on a whole interaction log (``adaptkit train``), with any
update rule of ``adaptkit.learning`` (sft, dpo, kto, distill, contrast, principles)."""

from adaptkit.training.config import TrainConfig
from adaptkit.training.fit import Fitter, TrainedAdapter

__all__ = ["Fitter", "TrainConfig", "TrainedAdapter"]
