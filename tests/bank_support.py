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
    **config_fields: object,
) -> Path:
    """Save a random LoRA for ``model`` (left unchanged) as a PEFT directory.

    ``config_fields`` go to PEFT's ``LoraConfig`` as they are (``layers_to_transform``,
    ``rank_pattern``, ``alpha_pattern``...)."""
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(targets) if not isinstance(targets, str) else targets,
        use_rslora=use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
        **config_fields,
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


@torch.inference_mode()
def reference_tokens(
    model: nn.Module, tokenizer, prompt: str, max_new_tokens: int, **options: object
) -> list[int]:
    """Greedy tokens for one prompt alone (unpadded), cut after the first stop token.
    ``options`` go to ``generate`` as they are (``repetition_penalty``, ...)."""
    from adaptkit.prompting import as_messages, encode_prompt, end_of_turn_id

    ids = torch.tensor([encode_prompt(tokenizer, as_messages(prompt))])
    stops = [end_of_turn_id(tokenizer)]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
        stops.append(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    output = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stops,
        pad_token_id=pad,
        **options,
    )
    row = output[0, ids.shape[1] :].tolist()
    end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
    return row[:end]


def peft_reference(
    model: nn.Module,
    tokenizer,
    adapter_dir: Path | None,
    prompt: str,
    max_new_tokens: int,
    **options: object,
) -> list[int]:
    """PEFT's greedy tokens for ``prompt`` with ``adapter_dir`` alone (None: the base);
    ``options`` go to ``generate``."""
    from peft import PeftModel

    if adapter_dir is None:
        return reference_tokens(model, tokenizer, prompt, max_new_tokens, **options)
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    try:
        return reference_tokens(peft_model, tokenizer, prompt, max_new_tokens, **options)
    finally:
        peft_model.unload()
