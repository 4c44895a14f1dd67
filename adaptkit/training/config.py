"""Settings of training an adapter on a whole interaction log."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from adaptkit.errors import InputError
from adaptkit.learning import ANCHOR_ROWS_PER_STEP, KL_WEIGHT, StepConfig


@dataclass(frozen=True)
class TrainConfig:
    """Settings of training an adapter on a log. Field names are the CLI flags (``--steps`` ...)."""

    steps: int = field(default=40, metadata={"help": "optimizer steps"})
    lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate"})
    batch_size: int = field(default=4, metadata={"help": "examples per step"})
    max_length: int = field(
        default=384, metadata={"help": "tokens kept per example (from the end)"}
    )
    seed: int = field(default=0, metadata={"help": "random seed (example order, init)"})
    word_dropout: float = field(
        default=0.0,
        metadata={
            "help": "drop each request word with this probability at every step, except "
            "words the answer repeats: the adapter then follows requests worded otherwise"
        },
    )

    choice_weight: float = field(
        default=0.0,
        metadata={
            "help": "sft: train answers that are a decision (an option picked, a label from "
            "the user's small set) on that decision, with this weight on choosing it over "
            "the alternatives; 0 trains every answer as written"
        },
    )

    kl_weight: float = field(
        default=KL_WEIGHT,
        metadata={
            "help": "with the KL anchor: weight of KL(base || adapter) on general prompts, "
            "which keeps the adapter's answers to them the base's"
        },
    )
    anchor_prompts: int = field(
        default=ANCHOR_ROWS_PER_STEP,
        metadata={"help": "with the KL anchor: general prompts under KL per step"},
    )

    def __post_init__(self) -> None:
        problems = []
        if not math.isfinite(self.kl_weight) or self.kl_weight < 0:
            problems.append(f"--kl-weight must be >= 0, got {self.kl_weight}")
        if self.anchor_prompts < 0:
            problems.append(f"--anchor-prompts must be >= 0, got {self.anchor_prompts}")
        if not math.isfinite(self.choice_weight) or self.choice_weight < 0:
            problems.append(f"--choice-weight must be >= 0, got {self.choice_weight}")
        if self.steps < 1:
            problems.append(f"--steps must be >= 1, got {self.steps}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            problems.append(f"--lr must be a positive finite number, got {self.lr}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_length < 8:
            problems.append(f"--max-length must be >= 8, got {self.max_length}")
        if not 0.0 <= self.word_dropout < 1.0:
            problems.append(f"--word-dropout must be in [0, 1), got {self.word_dropout}")
        if problems:
            raise InputError("; ".join(problems))

    def step_config(self, *, kl_anchor: bool) -> StepConfig:
        """The step loop's arguments; ``kl_anchor`` adds the KL anchor (``kl_weight``,
        ``anchor_prompts``; the online trainer's by default)."""
        return StepConfig(
            steps=self.steps,
            lr=self.lr,
            max_length=self.max_length,
            anchor_prompts=self.anchor_prompts if kl_anchor else 0,
            kl_weight=self.kl_weight if kl_anchor else 0.0,
            seed=self.seed,
        )


__all__ = ["TrainConfig"]
