"""The trainer's one LoRA slot over its own copy of the base model.

Warm start = copy a version's safetensors into the slot's LoRA tensors (no new
model, no new PEFT wrapper unless the version's LoRA shape differs). The trainer
owns this base model: generation elsewhere never sees these modules change.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load as load_safetensors
from torch import Tensor

from adaptkit.base_model import BaseModel
from adaptkit.learning.encoding import Encoded
from adaptkit.learning.lora import LoraSpec
from adaptkit.learning.scoring import BottomCache, Scored, SplitForward
from adaptkit.quant import dequantize_from
from adaptkit.registry import VersionInfo

ADAPTER = "default"


def _shape(config: LoraConfig) -> tuple:
    layers = config.layers_to_transform
    layers = (layers,) if isinstance(layers, int) else tuple(layers or ())
    return (config.r, float(config.lora_alpha), tuple(sorted(config.target_modules or ())), layers)


def _fp32_from(model: torch.nn.Module, first_layer: int) -> None:
    """On an int8 base (``adaptkit.quant``): the layers from the lowest adapted one up
    compute in fp32 with the served int8 weights dequantized, so PEFT wraps them and
    gradients are exact for those weights; the frozen bottom keeps its int8 kernels."""
    dequantize_from(model, first_layer)


class AdapterSlot:
    """One trainable LoRA adapter on the trainer's base model."""

    def __init__(
        self, base: BaseModel, spec: LoraSpec, *, bottoms: BottomCache | None = None
    ) -> None:
        self.base = base
        self.spec = spec
        layers = spec.layers(base.model)
        _fp32_from(base.model, min(layers) if layers else 0)
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
        layers = _shape(config)[3]
        _fp32_from(self.base.model, min(layers) if layers else 0)
        self.model = get_peft_model(self.base.model, config)
        self.config = config
        self.forward.model = self.model  # same base weights: its cached bottoms stay valid

    def reset(self, *, seed: int = 0) -> None:
        """A fresh adapter of the slot's own shape (PEFT's initialisation, seeded)."""
        self._reshape(self.fresh_config)
        torch.manual_seed(seed)
        for module in self.model.modules():
            if isinstance(module, LoraLayer):
                module.reset_lora_parameters(ADAPTER, True)

    def load(self, version: VersionInfo, weights: bytes) -> None:
        """Warm-start from ``version``: ``weights`` are its safetensors bytes, read and
        verified by the registry (``Registry.read_weights``)."""
        self._reshape(LoraConfig.from_pretrained(str(Path(version.blob_path))))
        result = set_peft_model_state_dict(self.model, load_safetensors(weights))
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
