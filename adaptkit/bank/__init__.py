"""The adapter bank: tiers (disk -> RAM LRU -> active), batched multi-adapter layers,
mixed-user generation with per-row repetition control, merge/unmerge and composition."""

from adaptkit.bank.adapter import (
    PEFT_PREFIX,
    AdapterError,
    AdapterWeights,
    LoraWeights,
    ModuleShape,
    read_adapter,
)
from adaptkit.bank.calibration import Calibration, calibrated_choice
from adaptkit.bank.compose import build_weighted_adapter
from adaptkit.bank.engine import (
    DEFAULT_SHARED_DIR,
    DecodeSession,
    Engine,
    Result,
    Sampling,
    SessionRow,
)
from adaptkit.bank.lora_linear import MultiLoraLinear, adaptable_shapes
from adaptkit.bank.repetition import Repetition, RepetitionState
from adaptkit.bank.store import DEFAULT_CACHE_BYTES, AdapterBank, BankStats, ByteLRU, CacheFullError

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_SHARED_DIR",
    "PEFT_PREFIX",
    "AdapterBank",
    "AdapterError",
    "AdapterWeights",
    "BankStats",
    "ByteLRU",
    "CacheFullError",
    "DecodeSession",
    "Calibration",
    "Engine",
    "LoraWeights",
    "ModuleShape",
    "MultiLoraLinear",
    "Repetition",
    "RepetitionState",
    "Result",
    "Sampling",
    "SessionRow",
    "adaptable_shapes",
    "build_weighted_adapter",
    "calibrated_choice",
    "read_adapter",
]
