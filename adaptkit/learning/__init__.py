"""The learning engine: one LoRA slot over a base model, trained by update rules.

Rooms: ``lora`` (an adapter's shape), ``augment`` (request word dropout),
``encoding`` (rows as tensors), ``packing`` + ``scoring`` (the fast split, packed
forward), ``losses``, ``rules`` (what each method learns from and its loss),
``anchors`` (the KL anchor and the per-base caches), ``slot`` (the trainable
adapter), ``steps`` (the optimisation loop). Online updates (``adaptkit.online``)
and training on a whole log (``adaptkit.training``) both run on these.
"""

from adaptkit.learning import losses
from adaptkit.learning.anchors import (
    ANCHOR_PROMPTS,
    ANCHOR_ROWS_PER_STEP,
    ANCHOR_TOKENS,
    KL_WEIGHT,
    AnchorSet,
    BaseCaches,
)
from adaptkit.learning.augment import RequestDropout
from adaptkit.learning.encoding import IGNORE, Encoded, collate, encode_rows
from adaptkit.learning.lora import ALL_LINEAR, LoraSpec, online_lora
from adaptkit.learning.rules import (
    RULES,
    Example,
    RuleContext,
    Selection,
    UpdateRule,
    build_rule,
    history_examples,
    teacher_messages,
)
from adaptkit.learning.scoring import Scored, SplitForward
from adaptkit.learning.slot import AdapterSlot
from adaptkit.learning.steps import NonFiniteLossError, StepConfig, run_steps

__all__ = [
    "ALL_LINEAR",
    "ANCHOR_PROMPTS",
    "ANCHOR_ROWS_PER_STEP",
    "ANCHOR_TOKENS",
    "IGNORE",
    "KL_WEIGHT",
    "RULES",
    "AdapterSlot",
    "AnchorSet",
    "BaseCaches",
    "Encoded",
    "Example",
    "LoraSpec",
    "NonFiniteLossError",
    "RequestDropout",
    "RuleContext",
    "Scored",
    "Selection",
    "SplitForward",
    "StepConfig",
    "UpdateRule",
    "build_rule",
    "collate",
    "encode_rows",
    "history_examples",
    "losses",
    "online_lora",
    "run_steps",
    "teacher_messages",
]
