"""Supervised fine-tuning of a user's adapter on the answers the user accepted or wrote.

Targets: the edit if the user edited, else the chosen answer of a pair, else the
response unless it was rated -1. The loss covers the assistant's tokens only.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import get_peft_model
from tqdm.auto import tqdm

from adaptkit.base_model import BaseModel
from adaptkit.errors import InputError
from adaptkit.interactions import Interaction
from adaptkit.prompting import as_messages, encode_example
from adaptkit.training.augment import RequestDropout
from adaptkit.training.lora import LoraSpec


@dataclass(frozen=True)
class SFTConfig:
    """Optimisation settings. Field names are the CLI flags (``--steps`` ...)."""

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

    def __post_init__(self) -> None:
        problems = []
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


@dataclass(frozen=True)
class TrainedAdapter:
    """A trained adapter staged on disk in PEFT format, not yet in the registry."""

    directory: Path
    metrics: dict[str, float]


def _collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in batch])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def train_sft(
    base: BaseModel,
    interactions: list[Interaction],
    lora: LoraSpec,
    config: SFTConfig,
    output_dir: Path,
    *,
    progress: bool = True,
) -> TrainedAdapter:
    """Train a fresh LoRA on ``interactions`` and save it (PEFT format) into ``output_dir``.

    The base model is left exactly as it was.
    """
    tokenizer = base.tokenizer
    pairs = [
        (as_messages(i.messages), i.sft_target) for i in interactions if i.sft_target is not None
    ]
    examples = [encode_example(tokenizer, m, t, config.max_length) for m, t in pairs]
    if not examples:
        raise InputError(
            "no trainable interactions: every line was rated -1 without an edit or a chosen answer"
        )
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    dropout = RequestDropout(config.word_dropout)
    rng = random.Random(config.seed)

    def example(index: int) -> tuple[list[int], list[int]]:
        if not config.word_dropout:
            return examples[index]
        messages, target = pairs[index]
        thinned = list(dropout.messages(messages, target, rng))
        return encode_example(tokenizer, thinned, target, config.max_length)

    peft_model = get_peft_model(base.model, lora.peft_config(base.model))
    try:
        parameters = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=0.0)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        order: list[int] = []
        losses: list[float] = []
        started = time.perf_counter()
        peft_model.train()
        bar = tqdm(range(config.steps), desc="training", unit="step", disable=not progress)
        for _ in bar:
            if len(order) < config.batch_size:
                fresh = list(range(len(examples)))
                random.shuffle(fresh)
                order += fresh
            batch = [example(order.pop()) for _ in range(min(config.batch_size, len(examples)))]
            loss = peft_model(**_collate(batch, pad_id)).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss.item()}; lower --lr")
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        peft_model.eval()
        peft_model.save_pretrained(output_dir)
    finally:
        # Strip the LoRA layers so the shared base is exactly as before.
        peft_model.unload()
    window = max(1, min(5, len(losses) // 4))
    metrics = {
        "examples": float(len(examples)),
        "steps": float(config.steps),
        "loss_first": sum(losses[:window]) / window,
        "loss_last": sum(losses[-window:]) / window,
        "train_seconds": time.perf_counter() - started,
    }
    return TrainedAdapter(output_dir, metrics)
