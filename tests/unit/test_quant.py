"""The CPU int8 base (adaptkit.quant) on the tiny model: accuracy, row independence,
the adapter delta on top of it (PEFT parity), training through it, loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bank_support import make_lora_dir, publish_dir
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn

from adaptkit.bank import Engine
from adaptkit.bank.lora_linear import MultiLoraLinear, SharedDelta
from adaptkit.base_model import QUANT_CHOICES, load_base
from adaptkit.errors import InputError
from adaptkit.home import Home
from adaptkit.learning import LoraSpec
from adaptkit.learning.slot import AdapterSlot
from adaptkit.quant import Int8Linear, int8_layers, quantize_int8, resident_bytes
from adaptkit.registry import Registry
from adaptkit.router import Request

PROMPTS = [
    "How long does it take me to get to the library?",
    "What should I cook for dinner tonight?",
    "What is the capital of France? Paris. The ocean is vast and blue.",
    "weather",
]


def _linear(seed: int = 0, features: tuple[int, int] = (64, 48)) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(*features)


def test_int8_linear_is_close_to_fp32_and_its_weights_are_int8_per_channel() -> None:
    linear = _linear()
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(5, 7, 64)
    exact = linear(x)
    error = (layer(x) - exact).abs().amax() / exact.abs().amax()
    # bf16 activations and 8-bit weights: about 1% of the output's range.
    assert error < 0.03
    # Each row's scale is its absolute maximum / 127 (to bf16's rounding), and the served
    # weights lie on that row's int8 grid.
    expected_scale = linear.weight.abs().amax(dim=1) / 127
    assert torch.allclose(layer.scale.float(), expected_scale, rtol=2**-8)
    steps = layer.dequantized_weight() / layer.scale.float()[:, None]
    assert torch.equal(steps, layer.qweight.float()) and steps.abs().max() <= 127
    assert layer.qweight.dtype == torch.int8
    assert resident_bytes(layer) < linear.weight.numel() * 4 / 3


def test_a_row_gives_the_same_result_alone_and_in_any_batch() -> None:
    layer = Int8Linear.from_linear(_linear(1))
    row = torch.randn(1, 6, 64)
    alone = layer(row)
    # Batch-mates with 1000x larger and 1000x smaller activations, and a zero (padding) row.
    mates = torch.cat([torch.randn(1, 6, 64) * 1000, torch.randn(1, 6, 64) * 1e-3])
    batch = torch.cat([mates, row, torch.zeros(1, 6, 64)])
    assert torch.equal(layer(batch)[2], alone[0])
    assert torch.equal(layer(batch)[3], layer(torch.zeros(1, 6, 64))[0])


def test_backward_goes_through_the_served_weights() -> None:
    linear = _linear(2)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(3, 64, requires_grad=True)
    layer(x).pow(2).sum().backward()
    expected = 2 * layer(x.detach()) @ layer.dequantized_weight()
    assert torch.allclose(x.grad, expected, atol=1e-5)


def test_to_linear_holds_exactly_the_served_weights() -> None:
    layer = Int8Linear.from_linear(_linear(3))
    fp32 = layer.to_linear()
    assert type(fp32) is nn.Linear and not fp32.weight.requires_grad
    assert torch.equal(fp32.weight, layer.dequantized_weight())
    assert torch.equal(fp32.bias, layer.bias)


def test_lora_delta_on_an_int8_layer_is_peft_s_delta(tiny_model_dir: Path, tmp_path: Path) -> None:
    """PEFT parity for the adapter math: on an int8 base the wrapper adds exactly PEFT's
    LoRA delta (computed on fp32), to 1e-5; only the base projection is int8."""
    home = Home(tmp_path / "home").ensure()
    fp32 = load_base(str(tiny_model_dir), home=home)
    adapter = make_lora_dir(fp32.model, tmp_path / "lora", seed=5, rank=4)
    peft_model = PeftModel.from_pretrained(fp32.model, str(adapter))
    int8 = load_base(str(tiny_model_dir), home=home, quant="int8")
    torch.manual_seed(0)
    int8_wrapped = 0
    for name, module in peft_model.base_model.model.named_modules():
        if not isinstance(module, LoraLayer) or name.endswith("lm_head"):
            continue
        layer_x = torch.randn(3, 5, module.in_features)
        peft_delta = module(layer_x) - module.base_layer(layer_x)
        wrapper = MultiLoraLinear(int8.model.get_submodule(name))
        int8_wrapped += isinstance(wrapper.base, Int8Linear)
        wrapper.delta = SharedDelta(
            module.lora_A["default"].weight, module.lora_B["default"].weight,
            module.scaling["default"],
        )  # fmt: skip
        ours = wrapper(layer_x) - wrapper.base(layer_x)
        assert torch.allclose(ours, peft_delta, atol=1e-5), name
    assert int8_wrapped == 7 * fp32.model.config.num_hidden_layers
    peft_model.unload()


@pytest.fixture
def int8_world(tiny_model_dir: Path, tmp_path: Path):
    home = Home(tmp_path / "home").ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    fp32 = load_base(str(tiny_model_dir), home=home)
    for seed, user in enumerate(["alice", "bob", "carol"]):
        adapter = make_lora_dir(fp32.model, tmp_path / user, seed=seed, rank=4)
        publish_dir(registry, user, adapter, str(tiny_model_dir))
    base = load_base(str(tiny_model_dir), home=home, quant="int8")
    with Engine(base, registry, shared_dir=home.root / "shared") as engine:
        yield engine


def test_a_user_s_answer_does_not_depend_on_who_else_is_in_the_batch(int8_world) -> None:
    engine = int8_world
    users = ["alice", "bob", "carol", None]
    alone = [
        engine.generate([Request(prompt, user=user)], max_new_tokens=8)[0]
        for prompt, user in zip(PROMPTS, users, strict=True)
    ]
    # One mixed batch: different users, prompts of different lengths (left padding).
    mixed = engine.generate(
        [Request(p, user=u) for p, u in zip(PROMPTS, users, strict=True)], max_new_tokens=8
    )
    assert [r.tokens for r in mixed] == [r.tokens for r in alone]
    assert len({tuple(r.tokens) for r in mixed}) > 1  # the users really differ
    assert "torch-int8" in mixed[0].plan.describe()
    assert mixed[0].plan.to_dict()["base"].startswith("torch-int8")


def test_int8_base_loads_with_its_backend_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    fp32 = load_base(str(tiny_model_dir), home=home)
    int8 = load_base(str(tiny_model_dir), home=home, quant="int8")
    assert fp32.backend == "fp32" and int8.backend.startswith("torch-int8")
    linears = [n for n, m in fp32.model.named_modules() if isinstance(m, nn.Linear)]
    assert int8_layers(int8.model) == [n for n in linears if not n.endswith("lm_head")]
    assert int8.footprint_bytes == resident_bytes(int8.model) < fp32.footprint_bytes
    assert "bnb-int8" in QUANT_CHOICES
    with pytest.raises(InputError, match="--quant 'int4'"):
        load_base(str(tiny_model_dir), home=home, quant="int4")


def test_quantize_keeps_named_layers_fp32() -> None:
    model = nn.Sequential()
    model.add_module("up", nn.Linear(8, 8))
    model.add_module("lm_head", nn.Linear(8, 8))
    assert quantize_int8(model) == ["up"]
    assert isinstance(model.up, Int8Linear) and type(model.lm_head) is nn.Linear


def test_trainer_slot_on_an_int8_base_trains_its_top_layers_in_fp32(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    home = Home(tmp_path / "home").ensure()
    base = load_base(str(tiny_model_dir), home=home, quant="int8")
    served = {n: base.model.get_submodule(n).dequantized_weight() for n in int8_layers(base.model)}
    slot = AdapterSlot(base, LoraSpec(rank=4, top_layers=1))
    top = base.model.config.num_hidden_layers - 1
    remaining = int8_layers(slot.model)
    assert remaining and all(f".layers.{top}." not in n for n in remaining)
    lora_layers = [m for m in slot.model.modules() if isinstance(m, LoraLayer)]
    assert lora_layers and all(f".{top}." in n for n, m in slot.model.named_modules()
                               if isinstance(m, LoraLayer))  # fmt: skip
    for module in lora_layers:  # the fp32 top holds exactly the served int8 weights
        name = next(n for n, m in base.model.named_modules() if m is module.base_layer)
        key = name.removesuffix(".base_layer")
        assert torch.equal(module.base_layer.weight, served[key]), key
    # A gradient step changes the adapter.
    ids = base.tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    before = slot.snapshot()
    loss = slot.model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for p in slot.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(torch.equal(a, b) for a, b in zip(before, slot.snapshot(), strict=True))


def test_base_info_names_the_kernels(tiny_model_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from adaptkit.cli.main import main

    home = str(tmp_path / "home")
    runner = CliRunner()
    described = {
        quant: json.loads(
            runner.invoke(
                main, ["base", "info", str(tiny_model_dir), "--quant", quant, "--home", home]
            ).stdout
        )  # fmt: skip
        for quant in ("none", "int8")
    }
    assert described["none"]["backend"] == "fp32"
    assert described["int8"]["backend"].startswith("torch-int8")
    bad = runner.invoke(main, ["base", "info", str(tiny_model_dir), "--quant", "int4"])
    assert bad.exit_code == 2 and "--quant" in bad.output and "bnb-int8" in bad.output


def test_online_split_forward_runs_its_frozen_bottom_int8(tmp_path: Path) -> None:
    """The online trainer's fast path: the bottom states (int8) cached, the top fp32."""
    from adaptkit.learning import encode_rows, losses
    from tiny_model import make_tiny_model_dir

    path = make_tiny_model_dir(tmp_path / "deep", layers=4)
    base = load_base(str(path), home=Home(tmp_path / "home").ensure(), quant="int8")
    slot = AdapterSlot(base, LoraSpec(rank=4, top_layers=2))
    remaining = int8_layers(slot.model.base_model.model)
    assert len(remaining) == 14 and {n.split(".")[2] for n in remaining} == {"0", "1"}
    torch.manual_seed(0)
    for parameter in slot.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    rows = [(({"role": "user", "content": p},), "By bicycle, 12 minutes.") for p in PROMPTS]
    encoded = encode_rows(base.tokenizer, rows, 64)
    first = slot.scored(encoded)
    again = slot.scored(encoded)  # from the cached bottom states
    assert slot.forward.hits == len(rows)
    assert torch.equal(first.logits, again.logits)
    plain = slot.logits(encoded)[:, :-1][encoded.labels[:, 1:] != -100]
    scale = plain.abs().max()
    assert (first.logits - plain).abs().max() < 0.05 * scale  # packed vs padded int8 bottom
    sums, counts = slot.scored(encoded).sequence_logps()
    losses.sft_loss(sums, counts).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in slot.parameters())
