"""The adapter bank: tiers (disk -> RAM LRU -> active), batched multi-adapter layers,
mixed-user generation, merge/unmerge and composition."""

from adaptkit.bank.adapter import AdapterError, AdapterWeights, LoraWeights, read_adapter
from adaptkit.bank.calibration import Calibration, calibrated_choice
from adaptkit.bank.compose import build_weighted_adapter
from adaptkit.bank.engine import Engine, Result
from adaptkit.bank.lora_linear import MultiLoraLinear
from adaptkit.bank.store import AdapterBank, BankStats, ByteLRU, CacheFullError
from adaptkit.router import Plan, Request, Router, RoutingPolicy

__all__ = [
    "AdapterBank",
    "AdapterError",
    "AdapterWeights",
    "BankStats",
    "ByteLRU",
    "CacheFullError",
    "Calibration",
    "Engine",
    "LoraWeights",
    "MultiLoraLinear",
    "Plan",
    "Request",
    "Result",
    "Router",
    "RoutingPolicy",
    "build_weighted_adapter",
    "calibrated_choice",
    "read_adapter",
]
