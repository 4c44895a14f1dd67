"""Helpers for the bank's tests: random (nonzero) PEFT LoRA adapters and registry users.

A freshly initialised PEFT LoRA has B = 0 (no effect); these adapters get a
random B so that different users' adapters really give different answers.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from adaptkit.registry import Registry, VersionInfo


def make_lora_dir(
    model: nn.Module,
    output_dir: Path,
    *,
    seed: int,
    rank: int = 4,
    alpha: float = 8.0,
    targets: Sequence[str] | str = "all-linear",
    b_std: float = 0.5,
    use_rslora: bool = False,
) -> Path:
    """Save a random LoRA for ``model`` (left unchanged) as a PEFT directory."""
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(targets) if not isinstance(targets, str) else targets,
        use_rslora=use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    generator = torch.Generator().manual_seed(seed)
    peft_model = get_peft_model(model, config)
    try:
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    std = b_std if "lora_B" in name else 1.0 / parameter.shape[1] ** 0.5
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
        peft_model.save_pretrained(output_dir)
    finally:
        peft_model.unload()
    return output_dir


def publish_dir(registry: Registry, user: str, adapter_dir: Path, base_model: str) -> VersionInfo:
    """Publish a copy of ``adapter_dir`` as ``user``'s next (active) version."""
    staged = Path(tempfile.mkdtemp(prefix="staged-"))
    shutil.rmtree(staged)
    shutil.copytree(adapter_dir, staged)
    return registry.publish(
        user,
        staged,
        method="test",
        base_model=base_model,
        data_digest="0" * 64,
        metrics={},
        config={},
    )
