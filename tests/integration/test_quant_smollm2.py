"""The int8 base (adaptkit.quant) on the packaged SmolLM2-135M: mixed batches whose
rows do not depend on each other, a user's adapter trained and served on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bank_support import make_lora_dir, publish_dir

from adaptkit import AdaptKit
from adaptkit.bank import Engine
from adaptkit.base_model import load_base
from adaptkit.home import Home
from adaptkit.learning import LoraSpec
from adaptkit.quant import int8_layers
from adaptkit.registry import Registry
from adaptkit.router import Request
from adaptkit.training import TrainConfig

pytestmark = pytest.mark.integration
BASE = "smollm2-135m-instruct"
PROMPTS = [
    "What is the capital of France?",
    "Write a message to my landlord about the broken heater, please, in two sentences.",
    "Search the store for backpacks.",
    "Hi",
]


def test_int8_row_does_not_depend_on_the_other_users_of_its_batch(
    smollm2_home: Path, tmp_path: Path
) -> None:
    """Alice's row next to bob and carol, then next to carol and bob (their adapters
    swapped, the padding layout the same): her tokens are bitwise the same. With an
    activation scale shared across rows (torch.ao's dynamic quantization) they are not;
    weight-only int8 has no activation scale to share."""
    home = Home(smollm2_home)
    registry = Registry(home.registry_url, home.adapters_dir)
    fp32 = load_base(BASE, home=home)
    users = ["alice", "bob", "carol"]
    for seed, user in enumerate(users):
        lora = make_lora_dir(fp32.model, tmp_path / user, seed=seed, rank=8, b_std=0.02)
        publish_dir(registry, user, lora, BASE)
    base = load_base(BASE, home=home, quant="int8")
    assert len(int8_layers(base.model)) == 7 * base.model.config.num_hidden_layers
    assert base.footprint_bytes < 0.45 * fp32.footprint_bytes  # lm_head fp32
    with Engine(base, registry) as engine:
        first = engine.generate(
            [Request(p, user=u) for p, u in zip(PROMPTS, [*users, None], strict=True)],
            max_new_tokens=12,
        )
        swapped = engine.generate(
            [Request(p, user=u) for p, u in zip(PROMPTS, ["alice", "carol", "bob", None],
                                                strict=True)],
            max_new_tokens=12,
        )  # fmt: skip
    assert first[0].tokens == swapped[0].tokens and first[3].tokens == swapped[3].tokens
    assert [r.plan.user for r in swapped] == ["alice", "carol", "bob", None]
    assert all(r.plan.base.startswith("torch-int8") for r in first)


def test_train_on_an_int8_base_publishes_an_adapter_that_serves(smollm2_home: Path) -> None:
    log = Path(__file__).resolve().parents[2] / "users" / "examples" / "alice.jsonl"
    with AdaptKit(smollm2_home, quant="int8") as kit:
        version = kit.train(
            "alice",
            log,
            lora=LoraSpec(rank=4, top_layers=4),
            config=TrainConfig(steps=3),
            progress=False,
        )
        assert version.config["quant"] == "int8"
        assert torch.isfinite(torch.tensor(version.metrics["loss_last"]))
        answer = kit.chat("How do I get to work?", user="alice", max_new_tokens=8)
        assert answer.strip()
