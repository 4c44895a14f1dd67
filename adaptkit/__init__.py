"""adaptkit: per-user LoRA adapters over one shared small base model."""

from adaptkit.bank import Engine, Result
from adaptkit.base_model import DEFAULT_BASE, BaseModel, load_base
from adaptkit.errors import AdaptkitError, InputError, LogFormatError, UnknownUserError
from adaptkit.feedback import FeedbackEvent, FeedbackLog
from adaptkit.home import Home
from adaptkit.interactions import Feedback, Interaction, read_log
from adaptkit.kit import AdaptKit
from adaptkit.learning import LoraSpec
from adaptkit.online import OnlineConfig, OnlineTrainer, OnlineWorker
from adaptkit.router import Request, RoutingPolicy
from adaptkit.training import TrainConfig

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BASE",
    "AdaptKit",
    "AdaptkitError",
    "BaseModel",
    "Engine",
    "FeedbackEvent",
    "FeedbackLog",
    "Feedback",
    "Home",
    "InputError",
    "Interaction",
    "LogFormatError",
    "LoraSpec",
    "OnlineConfig",
    "OnlineTrainer",
    "OnlineWorker",
    "Request",
    "Result",
    "RoutingPolicy",
    "TrainConfig",
    "UnknownUserError",
    "load_base",
    "read_log",
]
