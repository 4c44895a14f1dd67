"""The trainer's one LoRA slot over its own copy of the base model.

Warm start = copy a version's safetensors into the slot's LoRA tensors (no new
model, no new PEFT wrapper unless the version's LoRA shape differs). The trainer
owns this base model: generation elsewhere never sees these modules change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from torch import Tensor

from adaptkit.base_model import BaseModel
from adaptkit.online.scoring import BottomCache, Scored, SplitForward
from adaptkit.prompting import encode_example
from adaptkit.registry import VersionInfo
from adaptkit.registry.blobs import ADAPTER_WEIGHTS, sha256_file
from adaptkit.training import LoraSpec

ADAPTER = "default"


@dataclass
class Encoded:
    input_ids: Tensor
    labels: Tensor
    attention_mask: Tensor


def encode_rows(tokenizer, rows: Sequence[tuple[Sequence[dict], str]], max_length: int) -> Encoded:
    """Right-padded (prompt, completion) rows, loss on the completion tokens only."""
    pairs = [encode_example(tokenizer, list(m), completion, max_length) for m, completion in rows]
    width = max(len(ids) for ids, _ in pairs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(
        input_ids=torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in pairs]),
        labels=torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in pairs]),
        attention_mask=torch.tensor(
            [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in pairs]
        ),
    )


def _shape(config: LoraConfig) -> tuple:
    layers = config.layers_to_transform
    layers = (layers,) if isinstance(layers, int) else tuple(layers or ())
    return (config.r, float(config.lora_alpha), tuple(sorted(config.target_modules or ())), layers)


class AdapterSlot:
    """One trainable LoRA adapter on the trainer's base model."""

    def __init__(
        self, base: BaseModel, spec: LoraSpec, *, bottoms: BottomCache | None = None
    ) -> None:
        self.base = base
        self.spec = spec
        self.fresh_config = spec.peft_config(base.model)
        self.model: PeftModel = get_peft_model(base.model, self.fresh_config)
        self.config = self.fresh_config
        self.forward = SplitForward(self.model, bottoms=bottoms)

    def _reshape(self, config: LoraConfig) -> None:
        if _shape(config) == _shape(self.config):
            return
        # A version of another LoRA shape (e.g. trained by `adaptkit train`): rebuild.
        self.model.unload()
        config = LoraConfig(
            r=config.r,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.0,
            target_modules=sorted(config.target_modules),
            layers_to_transform=config.layers_to_transform,
            layers_pattern=config.layers_pattern,
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(self.base.model, config)
        self.config = config
        self.forward.model = self.model  # same base weights: its cached bottoms stay valid

    def load(self, version: VersionInfo | None, *, seed: int = 0) -> None:
        """Warm-start from ``version`` (its blob verified), or a fresh adapter when None."""
        if version is None:
            self._reshape(self.fresh_config)
            torch.manual_seed(seed)
            for module in self.model.modules():
                if isinstance(module, LoraLayer):
                    module.reset_lora_parameters(ADAPTER, True)
            return
        path = Path(version.blob_path)
        weights = path / ADAPTER_WEIGHTS
        if sha256_file(weights) != version.blob_sha256:
            raise ValueError(
                f"adapter blob of {version.user_id!r} v{version.number} does not match its sha256"
            )
        self._reshape(LoraConfig.from_pretrained(str(path)))
        result = set_peft_model_state_dict(self.model, load_file(str(weights)))
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"adapter v{version.number} of {version.user_id!r} does not fit the slot: "
                f"missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}"
            )

    def parameters(self) -> list[Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def snapshot(self) -> list[Tensor]:
        return [p.detach().clone() for p in self.parameters()]

    def restore(self, snapshot: list[Tensor]) -> None:
        with torch.no_grad():
            for parameter, saved in zip(self.parameters(), snapshot, strict=True):
                parameter.copy_(saved)

    def interpolate(self, start: list[Tensor], end: list[Tensor], fraction: float) -> None:
        """Set the adapter to ``start + fraction * (end - start)``, parameter by parameter."""
        with torch.no_grad():
            for parameter, a, b in zip(self.parameters(), start, end, strict=True):
                parameter.copy_(a + fraction * (b - a))

    def save(self, directory: Path) -> None:
        """PEFT format (adapter_config.json + adapter_model.safetensors)."""
        self.model.save_pretrained(directory)

    def scored(self, encoded: Encoded, *, adapter: bool = True) -> Scored:
        """Logits where a completion token is predicted (fast path: ``scoring``)."""
        return self.forward.scored(
            encoded.input_ids, encoded.attention_mask, encoded.labels, adapter=adapter
        )

    def logits(self, encoded: Encoded, *, adapter: bool = True) -> Tensor:
        """All logits by the model's own forward (what tests compare against)."""
        kwargs = {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}
        if adapter:
            return self.model(**kwargs).logits
        with self.model.disable_adapter():
            return self.model(**kwargs).logits
