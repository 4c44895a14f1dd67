"""A CPU int8 base: int8 weights, int8 activations, fbgemm kernels, one scale per token.

``quantize_int8(model)`` replaces the base's linear layers (all but the ones kept in
fp32, ``lm_head`` by default) with ``Int8Linear``:

- weights: symmetric int8, one scale per output channel (row of W), packed once for
  PyTorch's fbgemm kernels (``quantized::linear_dynamic``);
- activations: symmetric, one scale per token (its absolute maximum), never one scale
  per tensor. ``linear_dynamic`` derives its activation scale from the whole input's
  range, which would make a row's result depend on the other rows of its batch (a
  left-padded row's logits moved by up to 14% that way). So each token is divided by
  its own absolute maximum and two constant columns, +1 and -1, are appended (their
  weights are zero): every input then spans exactly [-1, 1], the kernel's scale is the
  same for every batch, and a user's answer never depends on who else is in it.

bitsandbytes' int8 is built for GPUs: on this CPU it is 2.2x slower than fp32, while
these kernels are faster (``benchmarks/quant.py``). So ``--quant int8`` on a CPU means
this backend; ``--quant bnb-int8`` keeps bitsandbytes (``backend_of``).

Training through an ``Int8Linear``: the forward is the int8 kernel; the backward
multiplies by the dequantized weight (``scale * q``), i.e. the gradient is exact for
the weights actually served, with the activation rounding passed straight through.
``Int8Linear.to_linear`` gives an fp32 ``nn.Linear`` with exactly those weights, which
is what the trainer's slot uses for the layers it adapts (``dequantize_from``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, nn

# Layers kept fp32 by default. lm_head (the tied vocabulary projection): the greedy
# token is its argmax, and its error moves answers most (docs/quant.md has the numbers).
KEEP_FP32: frozenset[str] = frozenset({"lm_head"})
# fbgemm's packed weights live in the quantized engine picked here; oneDNN's takes
# other packed formats.
ENGINE = "fbgemm"


def int8_available() -> bool:
    """Whether this PyTorch build has the fbgemm int8 kernels (x86 CPU builds do)."""
    return ENGINE in torch.backends.quantized.supported_engines


class _Int8Matmul(torch.autograd.Function):
    """int8 forward; backward through the dequantized weight (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: Int8Linear) -> Tensor:  # type: ignore[override]
        ctx.layer = layer
        return layer.int8_forward(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad @ ctx.layer.dequantized_weight(), None


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with W int8 per output channel and x int8 per token."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        weight = weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = torch.round(weight / scale[:, None]).clamp(-127, 127)
        # Two zero columns for the constant +1/-1 inputs that pin the activation range.
        padded = torch.cat([q, q.new_zeros(self.out_features, 2)], dim=1)
        with warnings.catch_warnings():
            # PyTorch 2.13 marks quantized tensor creation deprecated; it is still the only
            # way into fbgemm's packed int8 weights, and torch is pinned (docs/quant.md).
            warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
            qweight = torch.quantize_per_channel(
                padded * scale[:, None],
                scale.double(),
                torch.zeros(self.out_features, dtype=torch.long),
                0,
                torch.qint8,
            )
        # The packed weights are the only copy (``dequantized_weight`` unpacks them).
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), False)
        with _engine():
            self._packed = torch.ops.quantized.linear_prepack(qweight, None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    def dequantized_weight(self) -> Tensor:
        """The weight this layer computes with, as fp32: ``scale * q``."""
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.dequantize()[:, : self.in_features]

    @property
    def nbytes(self) -> int:
        """Resident bytes: int8 weights (with the two pinning columns), fp32 scales, bias."""
        weights = self.out_features * (self.in_features + 2) + 4 * self.out_features
        return weights + (0 if self.bias is None else 4 * self.out_features)

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
        dtype = x.dtype
        x = x.float()
        # One scale per token: its absolute maximum (a zero token stays zero).
        absmax = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
        ones = x.new_ones(*x.shape[:-1], 1)
        pinned = torch.cat([x / absmax, ones, -ones], dim=-1)
        # reduce_range=True: 7-bit activations, so u8 x s8 pair sums cannot saturate
        # int16 on CPUs without VNNI (fbgemm's own default on x86).
        y = torch.ops.quantized.linear_dynamic(pinned, self._packed, True) * absmax
        if self.bias is not None:
            y = y + self.bias
        return y.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _Int8Matmul.apply(x, self)
        return self.int8_forward(x)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, int8 per-channel weights, per-token activations"
        )


class _engine:
    """Pack and run under fbgemm, restoring whatever engine the process had."""

    def __enter__(self) -> None:
        self.previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = ENGINE

    def __exit__(self, *exc_info: object) -> None:
        torch.backends.quantized.engine = self.previous


def quantize_int8(model: nn.Module, keep_fp32: Iterable[str] = KEEP_FP32) -> list[str]:
    """Replace every ``nn.Linear`` of ``model`` (in place) whose last name part is not in
    ``keep_fp32`` by an ``Int8Linear``; returns the replaced modules' names."""
    if not int8_available():
        raise RuntimeError(
            f"this PyTorch build has no {ENGINE} int8 kernels "
            f"(engines: {', '.join(torch.backends.quantized.supported_engines)}); "
            "use --quant none, or --quant bnb-int8 for bitsandbytes"
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
    """Parameters and buffers (shared tensors once) plus the int8 layers' packed weights,
    which ``get_memory_footprint`` does not see."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    dense = sum(t.numel() * t.element_size() for t in tensors.values())
    return dense + sum(m.nbytes for m in model.modules() if isinstance(m, Int8Linear))


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
