"""A CPU int8 base: int8 weights, int8 activations, fbgemm kernels, one scale per token.

``quantize_int8(model)`` replaces the base's linear layers (all but the ones kept in
fp32, ``lm_head`` and ``down_proj`` by default) with ``Int8Linear``:

- weights: symmetric int8, one scale per output channel, packed once for PyTorch's
  fbgemm kernels (``quantized::linear_dynamic``); SmoothQuant factors per input channel
  from fixed calibration chats (``calibration_ids``) move activation outliers into them;
- activations: symmetric, one scale per token (its absolute maximum), never one scale
  per tensor. ``linear_dynamic`` derives its activation scale from the whole input's
  range, which would make a row's result depend on the other rows of its batch. So each
  token is divided by its own absolute maximum and two constant columns, +1 and -1, are
  appended (their weights are zero): every input then spans exactly [-1, 1], the
  kernel's scale is the same for every batch, and a row's result is bitwise a function
  of that row alone.

bitsandbytes' int8 is built for GPUs: on this CPU it is 2.2x slower than fp32, while
these kernels are faster (``benchmarks/quant.py``). So ``--quant int8`` means this
backend; ``--quant bnb-int8`` keeps bitsandbytes (``base_model.backend_of``).

Training through an ``Int8Linear``: the forward is the int8 kernel; the backward
multiplies by the dequantized weight, i.e. the gradient is exact for the weights actually
served, with the activation rounding passed straight through. ``Int8Linear.to_linear``
gives an fp32 ``nn.Linear`` with exactly those weights, which is what the trainer's slot
uses for the layers it adapts (``dequantize_from``). docs/quant.md has the numbers.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

# Layers kept fp32 by default. lm_head (the tied vocabulary projection): the greedy
# token is its argmax. down_proj: its input (the SwiGLU product) has the largest
# per-token outliers; int8 there turned SmolLM2's "Paris" into "L'Etoile de la Cit"
# (docs/quant.md has the numbers for each choice).
KEEP_FP32: frozenset[str] = frozenset({"lm_head", "down_proj"})
# SmoothQuant's calibration: general requests and answers, fixed (never a user's data),
# so every load of a base quantizes it the same way.
CALIBRATION_CHATS: tuple[tuple[str, str], ...] = (
    ("How do I get to the train station from here?", "Walk two blocks north, then take bus 12."),
    ("Write a short message to my landlord about the broken heater.",
     "Hello, the heater in my flat stopped working yesterday. Could you send someone?"),
    ("What should I cook for dinner tonight?", "A vegetable curry with rice takes 30 minutes."),
    ("Summarize the plot of Romeo and Juliet in one sentence.",
     "Two young lovers from feuding families marry in secret and die through a misunderstanding."),
    ("Search the store for running shoes under $80.",
     "Here are three pairs under $80, sorted by rating: Nike, Asics and Brooks."),
    ("What is 17 times 23?", "17 times 23 is 391."),
    ("Translate 'good morning' into Spanish and French.", "Buenos días; bonjour."),
    ("Give me three tips for a job interview.",
     "Research the company, prepare examples of your work, and ask questions at the end."),
)  # fmt: skip
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

    def __init__(self, weight: Tensor, bias: Tensor | None, smooth: Tensor | None = None) -> None:
        """``smooth`` (in_features,): SmoothQuant's per-input-channel factors; the layer
        computes ``(x / smooth) (W * smooth)^T``, moving activation outliers into the
        weights, whose scales are per channel anyway. None: all ones."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        smooth = torch.ones(self.in_features) if smooth is None else smooth.detach().float()
        self.register_buffer("smooth", smooth)
        weight = weight.detach().float() * smooth
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
        self.reduce_range = not full_range_is_exact()

    @classmethod
    def from_linear(cls, linear: nn.Linear, smooth: Tensor | None = None) -> Int8Linear:
        return cls(linear.weight, linear.bias, smooth)

    def dequantized_weight(self) -> Tensor:
        """The weight this layer computes with, as fp32: ``scale * q``."""
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.dequantize()[:, : self.in_features] / self.smooth

    @property
    def nbytes(self) -> int:
        """Resident bytes: int8 weights (with the two pinning columns), fp32 scales, bias."""
        weights = self.out_features * (self.in_features + 2) + 4 * self.out_features
        return weights + 4 * self.in_features + (0 if self.bias is None else 4 * self.out_features)

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
        x = x.float() / self.smooth
        # One scale per token: its absolute maximum (a zero token stays zero).
        absmax = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
        ones = x.new_ones(*x.shape[:-1], 1)
        pinned = torch.cat([x / absmax, ones, -ones], dim=-1)
        y = torch.ops.quantized.linear_dynamic(pinned, self._packed, self.reduce_range) * absmax
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


@functools.cache
def full_range_is_exact() -> bool:
    """Whether fbgemm's 8-bit activations are safe here. On CPUs without VNNI its u8 x s8
    pair sums saturate int16, so fbgemm defaults to 7-bit activations (reduce_range);
    with VNNI they accumulate in int32 and the eighth bit is free accuracy (a third less
    logit error on SmolLM2). Checked once, on the worst case for saturation: every
    weight and activation at its extreme, with the signs lined up."""
    features = 64
    weight = torch.ones(4, features)
    x = torch.ones(2, features)
    x[:, -1] = -1.0  # the activation range [-1, 1], as pinned in int8_forward
    with warnings.catch_warnings(), _engine():
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        scale = torch.full((4,), 1 / 127.0, dtype=torch.double)
        zero = torch.zeros(4, dtype=torch.long)
        qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qweight, None)
        y = torch.ops.quantized.linear_dynamic(x, packed, False)
    exact = x @ weight.T
    return bool(((y - exact).abs() / exact.abs()).amax() < 0.02)


class _engine:
    """Pack and run under fbgemm, restoring whatever engine the process had."""

    def __enter__(self) -> None:
        self.previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = ENGINE

    def __exit__(self, *exc_info: object) -> None:
        torch.backends.quantized.engine = self.previous


def quantize_int8(
    model: nn.Module,
    keep_fp32: Iterable[str] = KEEP_FP32,
    calibration: Sequence[Sequence[int]] = (),
) -> list[str]:
    """Replace every ``nn.Linear`` of ``model`` (in place) whose last name part is not in
    ``keep_fp32`` by an ``Int8Linear``; returns the replaced modules' names.

    ``calibration``: token-id sequences run through the fp32 model first to find each
    layer's per-channel activation maxima for SmoothQuant (``calibration_ids``). They are
    fixed at load time, so no request ever changes another's quantization. Empty: no
    smoothing.
    """
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
    maxima = _activation_maxima(model, dict(targets), calibration) if calibration else {}
    for name, module in targets:
        smooth = None
        if name in maxima:
            # SmoothQuant with alpha 0.5: s_c = sqrt(max|x_c| / max|W_c|).
            weight_max = module.weight.detach().abs().amax(dim=0).clamp(min=1e-5)
            smooth = (maxima[name].clamp(min=1e-5) / weight_max).sqrt()
        _replace(model, name, Int8Linear.from_linear(module, smooth))
    return [name for name, _ in targets]


def calibration_ids(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """``CALIBRATION_CHATS`` as the model sees them (its chat template, if it has one)."""
    sequences = []
    for prompt, answer in CALIBRATION_CHATS:
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False)
        else:
            ids = tokenizer(f"{prompt}\n{answer}").input_ids
        sequences.append(list(ids))
    return sequences


def _activation_maxima(
    model: nn.Module, layers: dict[str, nn.Module], calibration: Sequence[Sequence[int]]
) -> dict[str, Tensor]:
    maxima: dict[str, Tensor] = {}

    def record(name: str):
        def hook(_module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
            seen = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(dim=0)
            maxima[name] = torch.maximum(maxima[name], seen) if name in maxima else seen

        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in layers.items()]
    try:
        with torch.no_grad():
            for ids in calibration:  # one at a time: no padding in the statistics
                model(input_ids=torch.tensor([list(ids)]))
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


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
