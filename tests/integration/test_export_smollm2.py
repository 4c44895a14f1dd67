"""An adapter learned from feedback on SmolLM2-135M, exported, loads in PEFT with the
engine's logits (the vLLM-subset export of an online adapter on the top layers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from adaptkit.bank import Engine, adaptable_shapes
from adaptkit.base_model import load_base
from adaptkit.export import export_version
from adaptkit.feedback import FeedbackEvent
from adaptkit.gate import DEFAULT_PROBES, ProbeSuite
from adaptkit.home import Home
from adaptkit.online import OnlineConfig, OnlineTrainer
from adaptkit.prompting import as_messages, encode_prompt
from adaptkit.registry import Registry

pytestmark = pytest.mark.integration

SERVED = "HuggingFaceTB/SmolLM2-135M-Instruct"
BIKE = "Take your bicycle: it is about 15 minutes by bike."


def test_feedback_trained_adapter_exports_with_identical_logits(
    smollm2_home: Path, tmp_path: Path
) -> None:
    home = Home(smollm2_home).ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    base = load_base("smollm2-135m-instruct", home=home)
    trainer = OnlineTrainer(
        registry,
        load_base("smollm2-135m-instruct", home=home),
        config=OnlineConfig(steps=3, lr=3e-3, holdout_every=0, replay=0, anchor_prompts=1),
        probes=ProbeSuite(DEFAULT_PROBES[:2], max_new_tokens=8),
        anchor_prompts=("Name three fruits.",),
    )
    try:
        # Two rounds of edits: v1 from nothing, v2 warm-started from v1.
        for place in ("the library", "the office"):
            request = trainer.log.record_completion("alice", f"How do I get to {place}?", "Drive.")
            trainer.log.record(FeedbackEvent("alice", "edit", request.id, text=BIKE))
            assert trainer.update("alice").version is not None
    finally:
        trainer.close()
    version = registry.version("alice", 2)
    assert version.parent_number == 1

    exported = export_version(
        registry,
        version,
        tmp_path / "alice@v2",
        served_base=SERVED,
        shapes=adaptable_shapes(base.model),
    )
    ids = torch.tensor([encode_prompt(base.tokenizer, as_messages("How do I get to the zoo?"))])
    with torch.inference_mode():
        with Engine(base, registry) as engine:
            engine.set_rows([[(engine.bank.load_user(version), 1.0)]])
            expected = base.model(ids).logits
            engine.clear_rows()
            plain = base.model(ids).logits
        peft = PeftModel.from_pretrained(
            load_base("smollm2-135m-instruct", home=home).model, str(exported.path)
        )
        got = peft(ids).logits
    assert (expected - plain).abs().max() > 1e-3, "the adapter changes nothing"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
