"""adaptkit: per-user LoRA adapters over one shared small base model."""

from adaptkit.base_model import DEFAULT_BASE, BaseModel, load_base
from adaptkit.errors import AdaptkitError, InputError, LogFormatError, UnknownUserError
from adaptkit.home import Home
from adaptkit.interactions import Feedback, Interaction, read_log
from adaptkit.kit import AdaptKit
from adaptkit.training import LoraSpec, SFTConfig

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BASE",
    "AdaptKit",
    "AdaptkitError",
    "BaseModel",
    "Feedback",
    "Home",
    "InputError",
    "Interaction",
    "LogFormatError",
    "LoraSpec",
    "SFTConfig",
    "UnknownUserError",
    "load_base",
    "read_log",
]
