"""A CPU int8 base: int8 weights, bf16 activations, one kernel call per layer.

``quantize_int8(model)`` replaces the base's linear layers (all but the ones kept in
fp32, ``lm_head`` by default) with ``Int8Linear``: weight-only int8.

- weights: symmetric int8, one scale per output channel, the only copy kept;
- activations: never quantized. PyTorch's ``_weight_int8pack_mm`` multiplies bf16
  activations by the int8 weights (converted in registers, accumulated in fp32) and
  rounds the result to bf16; the layer returns it as fp32. A row's result is a
  function of that row alone: there is no activation scale to share across a batch.

Decoding a few rows reads every weight once per token, so it is bound by memory
bandwidth: a quarter of fp32's bytes is what makes it faster. An earlier backend
quantized activations per token as well (fbgemm int8 x int8): it was no faster through
the engine at 8 rows, and the int8 rounding of activations made answers chaotic in the
input (docs/quant.md has both measurements).

bitsandbytes' int8 is built for GPUs: on this CPU it is 2.2x slower than fp32
(``benchmarks/quant.py``). So ``--quant int8`` means this backend; ``--quant bnb-int8``
keeps bitsandbytes (``base_model.backend_of``).

Training through an ``Int8Linear``: the backward multiplies by the dequantized weight,
i.e. the gradient is exact for the weights actually served (the bf16 rounding of
activations passed straight through). ``Int8Linear.to_linear`` gives an fp32
``nn.Linear`` with exactly those weights, which is what the trainer's slot uses for the
layers it adapts (``dequantize_from``). docs/quant.md has the numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

# Layers kept fp32 by default. lm_head (the vocabulary projection, tied to the input
# embeddings): the greedy token is its argmax (docs/quant.md has the numbers).
KEEP_FP32: frozenset[str] = frozenset({"lm_head"})
# The activation dtype of the kernel: its fp32 and fp16 paths are scalar loops, 30-100x
# slower than bf16's vectorized one on an AVX-512 CPU.
ACTIVATION_DTYPE = torch.bfloat16


def int8_available() -> bool:
    """Whether this PyTorch build has the weight-only int8 CPU kernel."""
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


class _Int8Matmul(torch.autograd.Function):
    """int8 forward; backward through the dequantized weight (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: Int8Linear) -> Tensor:  # type: ignore[override]
        ctx.layer = layer
        return layer.int8_forward(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad @ ctx.layer.dequantized_weight().to(grad.dtype), None


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with W int8, one scale per output channel; x in bf16."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        weight = weight.detach().float()
        # The scale is stored in the kernel's dtype; the int8 grid is chosen for that
        # rounded scale, so dequantized_weight() is exactly what the kernel multiplies by.
        scale = (weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0).to(ACTIVATION_DTYPE)
        q = torch.round(weight / scale.float()[:, None]).clamp(-127, 127)
        self.register_buffer("qweight", q.to(torch.int8).contiguous())
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    def dequantized_weight(self) -> Tensor:
        """The weight this layer computes with, as fp32: ``scale * q``."""
        return self.qweight.float() * self.scale.float()[:, None]

    def to_linear(self) -> nn.Linear:
        """An fp32 ``nn.Linear`` holding exactly the served (dequantized) weights."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        linear.requires_grad_(False)
        return linear

    def int8_forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).to(ACTIVATION_DTYPE)  # the kernel takes 2-D
        y = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scale)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _Int8Matmul.apply(x, self)
        return self.int8_forward(x)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, int8 per-channel weights, bf16 activations"
        )


def quantize_int8(model: nn.Module, keep_fp32: Iterable[str] = KEEP_FP32) -> list[str]:
    """Replace every ``nn.Linear`` of ``model`` (in place) whose last name part is not in
    ``keep_fp32`` by an ``Int8Linear``; returns the replaced modules' names. A tied
    ``lm_head`` quantized gets its own int8 copy; the input embeddings stay fp32."""
    if not int8_available():
        raise RuntimeError(
            f"PyTorch {torch.__version__} has no weight-only int8 kernel "
            "(aten._weight_int8pack_mm); use --quant none, or --quant bnb-int8 for bitsandbytes"
        )
    keep = frozenset(keep_fp32)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and name.rsplit(".", 1)[-1] not in keep
    ]
    for name, module in targets:
        _replace(model, name, Int8Linear.from_linear(module))
    return [name for name, _ in targets]


def dequantize_from(model: nn.Module, first_layer: int) -> list[str]:
    """Turn the ``Int8Linear`` layers of decoder layers ``first_layer`` and above back
    into fp32 ``nn.Linear`` holding the same (dequantized) weights; returns their names.

    For a trainer adapting the top layers: PEFT wraps ``nn.Linear``, and the layers a
    gradient passes through then compute in fp32 with the weights the server uses. The
    frozen layers below keep their int8 kernels: no gradient reaches them.
    """
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, Int8Linear) and _layer_index(name) >= first_layer
    ]
    for name in names:
        _replace(model, name, model.get_submodule(name).to_linear())
    return names


def int8_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, Int8Linear)]


def resident_bytes(model: nn.Module) -> int:
    """Parameters and buffers, shared tensors once (the int8 weights are buffers)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _layer_index(name: str) -> int:
    """The decoder layer a module belongs to (``model.layers.7.mlp.up_proj`` -> 7);
    modules outside the layers (``lm_head``) count as above them all."""
    parts = name.split(".")
    for before, part in zip(parts, parts[1:], strict=False):
        if before == "layers" and part.isdigit():
            return int(part)
    return 1 << 30


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
