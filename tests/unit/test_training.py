"""Training on a log (the sft rule) on the tiny model: assistant-only labels, falling loss,
PEFT format, base untouched."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from adaptkit.base_model import load_base
from adaptkit.errors import InputError
from adaptkit.home import Home
from adaptkit.interactions import read_log
from adaptkit.learning import LoraSpec
from adaptkit.prompting import encode_example, end_of_turn_id
from adaptkit.training import Fitter, TrainConfig
from conftest import EXAMPLES


@pytest.fixture
def tiny_base(tiny_model_dir: Path, tmp_path: Path):
    return load_base(str(tiny_model_dir), home=Home(tmp_path).ensure())


def test_labels_cover_exactly_the_assistant_answer(tiny_base) -> None:
    tokenizer = tiny_base.tokenizer
    messages = [{"role": "user", "content": "How far is the zoo?"}]
    input_ids, labels = encode_example(tokenizer, messages, "About 4 km by bike.", 256)
    assert len(input_ids) == len(labels)
    answer = [t for t, label in zip(input_ids, labels, strict=True) if label != -100]
    assert answer[-1] == end_of_turn_id(tokenizer)
    assert tokenizer.decode(answer[:-1]) == "About 4 km by bike."
    prompt = tokenizer.decode(input_ids[: len(input_ids) - len(answer)])
    assert prompt.endswith("<|im_start|>assistant\n") and "How far is the zoo?" in prompt


def test_sft_lowers_loss_saves_peft_format_and_restores_base(tiny_base, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in tiny_base.model.state_dict().items()}
    interactions = read_log(EXAMPLES / "alice.jsonl")
    out = tmp_path / "adapter"
    out.mkdir()
    trained = Fitter(tiny_base).fit(
        interactions,
        "sft",
        LoraSpec(rank=4, alpha=8),
        TrainConfig(steps=60, lr=3e-2, batch_size=4),
        out,
        progress=False,
    )
    assert trained.metrics["loss_last"] < 0.7 * trained.metrics["loss_first"]
    assert trained.metrics["examples"] == 14  # the rated -1 line has an edit, so it counts
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())
    # The shared base is exactly as it was: no LoRA layers left behind, same weights.
    after = tiny_base.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    # PEFT itself loads what we saved.
    loaded = PeftModel.from_pretrained(tiny_base.model, out)
    assert loaded.peft_config["default"].r == 4
    loaded.unload()


def test_bad_hyperparameters_name_the_flag() -> None:
    with pytest.raises(InputError, match="--rank must be a positive integer, got 0"):
        LoraSpec(rank=0)
    with pytest.raises(InputError, match="--lr must be a positive finite number, got nan"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(InputError, match="--steps must be >= 1.*--batch-size must be >= 1"):
        TrainConfig(steps=0, batch_size=0)
    with pytest.raises(InputError, match="--kl-weight must be >= 0.*--anchor-prompts must be >= 0"):
        TrainConfig(kl_weight=-1.0, anchor_prompts=-1)


def test_the_kl_anchor_settings_reach_the_step_loop_only_with_the_anchor() -> None:
    config = TrainConfig(kl_weight=30.0, anchor_prompts=6)
    anchored = config.step_config(kl_anchor=True)
    assert (anchored.kl_weight, anchored.anchor_prompts) == (30.0, 6)
    plain = config.step_config(kl_anchor=False)
    assert (plain.kl_weight, plain.anchor_prompts) == (0.0, 0)


def test_unknown_target_module_is_named(tiny_base) -> None:
    with pytest.raises(InputError, match="--targets 'q_proj,qkv'.*qkv"):
        LoraSpec(targets="q_proj,qkv").target_modules(tiny_base.model)


def _anchor_kl(slot, anchors) -> float:
    """Mean KL(base || adapter) over the anchor set's answers."""
    from adaptkit.learning import encode_rows

    with torch.no_grad():
        scored = slot.scored(encode_rows(slot.base.tokenizer, anchors.rows, 64))
        logps = torch.log_softmax(scored.logits.float(), dim=-1)
    total = [
        (ref.exp() * (ref - logps[scored.rows == i])).sum(-1).mean()
        for i, ref in enumerate(anchors.reference)
    ]
    return float(torch.stack(total).mean())


def test_a_heavier_kl_weight_keeps_general_answers_closer_to_the_base(tiny_base) -> None:
    from adaptkit.learning import ANCHOR_PROMPTS, AdapterSlot, AnchorSet, Example, run_steps
    from adaptkit.learning.rules import build_rule

    slot = AdapterSlot(tiny_base, LoraSpec(rank=4, alpha=8))
    try:
        anchors = AnchorSet.build(slot, ANCHOR_PROMPTS[:6], 64, answer_tokens=8)
        ask = ({"role": "user", "content": "Plan my Sunday."},)
        examples = [Example(ask, "Brush Mochi, then a 5 mile bike ride.")] * 4
        drift = {}
        for weight in (0.0, 30.0):
            slot.reset()
            config = TrainConfig(steps=25, lr=3e-2, max_length=64, kl_weight=weight)
            config = replace(config, anchor_prompts=len(anchors.rows))
            run_steps(
                slot,
                build_rule("sft"),
                lambda _step: examples,
                config.step_config(kl_anchor=True),
                anchors=anchors,
            )
            drift[weight] = _anchor_kl(slot, anchors)
        assert drift[30.0] < 0.5 * drift[0.0], drift
    finally:
        slot.model.unload()
