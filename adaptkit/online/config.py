"""Settings of the online trainer's updates."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from adaptkit.errors import InputError
from adaptkit.learning import ANCHOR_ROWS_PER_STEP, ANCHOR_TOKENS, KL_WEIGHT, RULES, StepConfig


@dataclass(frozen=True)
class OnlineConfig:
    """Settings of online updates. Field names are the CLI flags (``--steps`` ...)."""

    method: str = field(
        default="sft", metadata={"help": "update rule: sft|dpo|kto|distill|contrast|principles"}
    )
    steps: int = field(default=4, metadata={"help": "optimizer steps per update"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate"})
    max_length: int = field(default=96, metadata={"help": "tokens kept per example"})
    max_events: int = field(default=16, metadata={"help": "events coalesced into one update"})
    replay: int = field(default=2, metadata={"help": "earlier answers replayed per step"})
    anchor_prompts: int = field(
        default=ANCHOR_ROWS_PER_STEP, metadata={"help": "general prompts per step (KL)"}
    )
    kl_weight: float = field(default=KL_WEIGHT, metadata={"help": "weight of KL(base || adapter)"})
    anchor_tokens: int = field(
        default=ANCHOR_TOKENS,
        metadata={"help": "tokens of each general prompt's base answer under KL"},
    )
    l2_weight: float = field(default=0.0, metadata={"help": "pull toward the previous version"})
    beta: float = field(default=0.1, metadata={"help": "dpo/kto temperature"})
    choice_weight: float = field(
        default=0.0,
        metadata={"help": "sft: weight of choosing a decision over its alternatives (0: off)"},
    )
    holdout_every: int = field(default=5, metadata={"help": "hold back events with id % N == 0"})
    backtrack: int = field(
        default=1, metadata={"help": "halvings of an update tried when the gate refuses it"}
    )
    teacher_tokens: int = field(default=48, metadata={"help": "distill: teacher answer length"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        problems = []
        if self.method not in RULES:
            problems.append(f"--method must be one of {', '.join(RULES)}, got {self.method!r}")
        for name, least in (
            ("steps", 1),
            ("max_events", 1),
            ("teacher_tokens", 1),
            ("anchor_tokens", 1),
            ("replay", 0),
            ("anchor_prompts", 0),
            ("holdout_every", 0),
            ("backtrack", 0),
        ):
            value = getattr(self, name)
            if value < least:
                problems.append(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
        for name in ("lr", "beta"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                problems.append(f"--{name} must be a positive finite number, got {value}")
        for name in ("kl_weight", "l2_weight", "choice_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                problems.append(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.max_length < 16:
            problems.append(f"--max-length must be >= 16, got {self.max_length}")
        if problems:
            raise InputError("; ".join(problems))

    def step_config(self) -> StepConfig:
        """The step loop's arguments for one update."""
        return StepConfig(
            steps=self.steps,
            lr=self.lr,
            max_length=self.max_length,
            replay=self.replay,
            anchor_prompts=self.anchor_prompts,
            kl_weight=self.kl_weight,
            l2_weight=self.l2_weight,
            seed=self.seed,
        )


__all__ = ["OnlineConfig"]
