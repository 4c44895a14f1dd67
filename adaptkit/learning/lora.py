"""The shape of a user's adapter: which modules, what rank."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from peft import LoraConfig
from torch import nn

from adaptkit.errors import InputError

ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class LoraSpec:
    """LoRA hyper-parameters. Field names are the CLI flags (``--rank`` ...)."""

    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scale = alpha / rank)"})
    targets: str = field(
        default=ALL_LINEAR,
        metadata={
            "help": "comma-separated module names, or 'all-linear' (every linear but lm_head)"
        },
    )
    top_layers: int = field(
        default=0,
        metadata={"help": "adapt only the last N decoder layers (0: all layers)"},
    )

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.rank, int) or self.rank < 1:
            problems.append(f"--rank must be a positive integer, got {self.rank!r}")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            problems.append(f"--alpha must be a positive finite number, got {self.alpha!r}")
        if not isinstance(self.top_layers, int) or self.top_layers < 0:
            problems.append(f"--top-layers must be an integer >= 0, got {self.top_layers!r}")
        if not self.targets.strip():
            problems.append("--targets must name at least one module (or 'all-linear')")
        if problems:
            raise InputError("; ".join(problems))

    def target_modules(self, model: nn.Module) -> list[str]:
        """Explicit module names (what vLLM/LoRAX expect in adapter_config.json)."""
        linear_names = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, nn.Linear) or type(module).__name__.startswith("Linear")
            }
            - {"lm_head"}
        )
        if self.targets == ALL_LINEAR:
            return linear_names
        wanted = [t.strip() for t in self.targets.split(",") if t.strip()]
        unknown = [t for t in wanted if t not in linear_names]
        if unknown:
            raise InputError(
                f"--targets {self.targets!r}: {', '.join(unknown)} not linear modules of this "
                f"model; choose from {', '.join(linear_names)}"
            )
        return wanted

    def layers(self, model: nn.Module) -> list[int] | None:
        """Indices of the adapted decoder layers (None: all of them)."""
        if not self.top_layers:
            return None
        total = model.config.num_hidden_layers
        if self.top_layers > total:
            raise InputError(
                f"--top-layers {self.top_layers}: the model has only {total} decoder layers; "
                f"choose 1..{total}, or 0 for all"
            )
        return list(range(total - self.top_layers, total))

    def peft_config(self, model: nn.Module) -> LoraConfig:
        layers = self.layers(model)
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=0.0,
            target_modules=self.target_modules(model),
            layers_to_transform=layers,
            layers_pattern="layers" if layers else None,
            bias="none",
            task_type="CAUSAL_LM",
        )


def online_lora(num_layers: int) -> LoraSpec:
    """New users' adapter shape: the MLPs of the top 40% of the layers, rank 8.

    On SmolLM2 (``benchmarks/online.py --targets ... --top-layers ...``, 10 rounds):
    all-linear on every layer learns the user as well (success 1.0, retention 1.0)
    but an update takes 11.9 s; q/v on the top 8 layers never learns them (success
    0.0: the gate refuses every update after the third, retention 0.89); the MLPs of
    the top 12 reach success 1.0 with retention 1.0 at 3.95 s. The top layers only,
    because that is what makes an update fast (``scoring.SplitForward`` caches
    everything below them). A user whose active version has another shape (e.g.
    ``adaptkit train``, all-linear) is warm-started in that shape.
    """
    return LoraSpec(
        rank=8,
        alpha=16.0,
        targets="gate_proj,up_proj,down_proj",
        top_layers=-(-num_layers * 2 // 5),
    )
