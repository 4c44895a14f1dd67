"""Training a user's LoRA adapter from interactions."""

from adaptkit.training.lora import LoraSpec
from adaptkit.training.sft import SFTConfig, TrainedAdapter, train_sft

__all__ = ["LoraSpec", "SFTConfig", "TrainedAdapter", "train_sft"]
