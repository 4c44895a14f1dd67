"""Each update rule moves SmolLM2-135M's behaviour toward the feedback (one short update)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptkit.base_model import load_base
from adaptkit.feedback import FeedbackEvent
from adaptkit.gate import DEFAULT_PROBES, ProbeSuite
from adaptkit.home import Home
from adaptkit.learning import encode_rows, losses, teacher_messages
from adaptkit.online import OnlineConfig, OnlineTrainer
from adaptkit.prompting import as_messages
from adaptkit.registry import Registry

pytestmark = pytest.mark.integration

TRIPS = ["the library", "the office"]
HELD_BACK = as_messages("How do I get to the zoo from home?")
BIKE = "Take your bicycle: it is about 15 minutes by bike."
CAR = "Take the car: it is about 10 minutes by car."
NOTE = "I always travel by bicycle and never drive."


@pytest.fixture(scope="module")
def base(smollm2_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("online-smollm2")
    (root / "models").mkdir()
    (root / "models" / "smollm2-135m-instruct").symlink_to(smollm2_cache)
    return load_base("smollm2-135m-instruct", home=Home(root))


@pytest.fixture(scope="module")
def probes(base):
    return ProbeSuite(DEFAULT_PROBES[:2], max_new_tokens=10)  # the trainer prepares it


@torch.no_grad()
def logp(slot, messages, answer: str, adapter: bool = True) -> float:
    encoded = encode_rows(slot.base.tokenizer, [(tuple(messages), answer)], 96)
    sums, _ = losses.sequence_logps(slot.logits(encoded, adapter=adapter), encoded.labels)
    return float(sums[0])


def send(trainer: OnlineTrainer, method: str) -> None:
    log = trainer.log
    for place in TRIPS:
        prompt = f"How do I get to {place}?"
        if method in ("sft", "dpo"):
            request = log.record_completion("alice", prompt, CAR)
            log.record(FeedbackEvent("alice", "edit", request.id, text=BIKE))
        elif method == "kto":
            good = log.record_completion("alice", prompt, BIKE)
            log.record(FeedbackEvent("alice", "up", good.id))
            bad = log.record_completion("alice", prompt, CAR)
            log.record(FeedbackEvent("alice", "down", bad.id))
        else:
            request = log.record_completion("alice", prompt, CAR)
            log.record(FeedbackEvent("alice", "accept", request.id))
    if method == "distill":
        log.record(FeedbackEvent("alice", "note", text=NOTE))


@pytest.mark.parametrize("method", ["sft", "dpo", "kto", "distill"])
def test_update_moves_behaviour_toward_the_feedback(base, probes, tmp_path, method) -> None:
    root = Home(tmp_path / "home").ensure()
    trainer = OnlineTrainer(
        Registry(root.registry_url, root.adapters_dir),
        base,
        config=OnlineConfig(
            method=method,
            steps=3,
            lr=3e-3,
            holdout_every=0,
            replay=0,
            anchor_prompts=1,
            max_length=64,
            teacher_tokens=24,
        ),
        probes=probes,
        anchor_prompts=("Name three fruits.",),
    )
    try:
        send(trainer, method)
        result = trainer.update("alice")
        assert result.version is not None, result
        slot = trainer.slot  # holds the new version's weights
        if method == "distill":
            # Toward the teacher: its answer (with the note in context) gets more likely
            # from the adapter *without* the note.
            target = trainer._teacher([teacher_messages(tuple(HELD_BACK), [NOTE], [])])[0]
            assert logp(slot, HELD_BACK, target) > logp(slot, HELD_BACK, target, adapter=False)
        else:
            before = logp(slot, HELD_BACK, BIKE, False) - logp(slot, HELD_BACK, CAR, False)
            after = logp(slot, HELD_BACK, BIKE) - logp(slot, HELD_BACK, CAR)
            assert after > before + 0.1, (before, after)
    finally:
        trainer.close()
