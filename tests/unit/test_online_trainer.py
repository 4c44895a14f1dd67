"""OnlineTrainer on the tiny model: versions, warm start, gate, rejections, rollback, worker."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptkit.base_model import load_base
from adaptkit.feedback import FeedbackEvent
from adaptkit.gate import Gate, GateConfig, ProbeSuite, probes_from_answers
from adaptkit.home import Home
from adaptkit.learning import AdapterSlot, LoraSpec, encode_rows
from adaptkit.learning.rules import SFTRule
from adaptkit.online import OnlineConfig, OnlineTrainer, OnlineWorker
from adaptkit.prompting import as_messages, generate
from adaptkit.registry import ACTIVE, ADAPTER_WEIGHTS, CANDIDATE, RETIRED, Registry

FAST = OnlineConfig(steps=2, holdout_every=0, anchor_prompts=1, replay=1)


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_base(str(tiny_model_dir), home=Home(tmp_path_factory.mktemp("trainer-home")))


@pytest.fixture
def registry(home: Path, db_url: str) -> Registry:
    root = Home(home).ensure()
    return Registry(db_url, root.adapters_dir)


def make_trainer(registry, base, config=FAST, **kwargs) -> OnlineTrainer:
    return OnlineTrainer(
        registry,
        base,
        config=config,
        lora=LoraSpec(rank=4),
        anchor_prompts=("Name three fruits.", "What is a noun?"),
        **kwargs,
    )


def feedback(trainer: OnlineTrainer, n: int, user: str = "alice") -> list[int]:
    ids = []
    for i in range(n):
        request = trainer.log.record_completion(user, f"How far is place {i}?", "By car.")
        event = FeedbackEvent(user, "edit", request.id, text=f"By bicycle, {10 + i} minutes.")
        ids.append(trainer.log.record(event).id)
    return ids


def test_update_publishes_a_version_and_consumes_its_events(registry, tiny_base) -> None:
    trainer = make_trainer(registry, tiny_base)
    try:
        ids = feedback(trainer, 3)
        first = trainer.update("alice")
        assert first.promoted and first.version.status == ACTIVE
        assert first.version.status_reason.startswith("promoted: probe retention")
        assert first.version.metrics["gate_passed"] is True
        events = trainer.log.events("alice")
        assert [(e.id, e.state, e.outcome) for e in events] == [
            (i, "consumed", "trained") for i in ids
        ]
        assert trainer.update("alice") is None  # nothing pending

        feedback(trainer, 2)
        second = trainer.update("alice")
        assert second.version.parent_number == first.version.number
        assert registry.version("alice", 1).status == RETIRED
        # Warm start: loading v2 puts exactly its saved tensors in the slot.
        trainer.slot.load(second.version, registry.read_weights(second.version))
        saved = load_file(str(Path(second.version.blob_path) / ADAPTER_WEIGHTS))
        state = {k: v for k, v in trainer.slot.model.state_dict().items() if "lora_" in k}
        assert len(saved) == len(state)
        for key, tensor in saved.items():
            live = key.replace(".weight", ".default.weight")
            assert torch.equal(state[live], tensor)
    finally:
        trainer.close()


def test_a_user_leased_by_another_trainer_is_left_to_it(registry, tiny_base) -> None:
    trainer = make_trainer(registry, tiny_base)
    try:
        feedback(trainer, 2)
        assert registry.try_lease("alice", holder="elsewhere:1", seconds=60)
        assert trainer.update("alice") is None  # another process is training alice
        assert len(trainer.log.pending("alice").events) == 2
        registry.release_lease("alice", holder="elsewhere:1")
        result = trainer.update("alice")
        assert result is not None and result.version is not None
    finally:
        trainer.close()
    # The trainer gave its own lease back: another trainer can take the user now.
    assert registry.try_lease("alice", holder="elsewhere:1", seconds=60)


def test_gate_holds_back_a_candidate_that_forgets(registry, tiny_base) -> None:
    prompts = ["What is the capital of France?", "Name three fruits.", "What is a noun?"]
    answers = generate(
        tiny_base.model, tiny_base.tokenizer, [as_messages(p) for p in prompts], max_new_tokens=8
    )
    # The random tiny model answers everything through near-ties: keep them all here.
    probes = ProbeSuite(
        probes_from_answers(prompts, answers, words=3), max_new_tokens=8, min_margin=0.0
    )
    gate = Gate(probes, GateConfig(min_retention=1.0))
    careless = OnlineConfig(
        steps=8, lr=0.2, holdout_every=0, replay=0, anchor_prompts=0, kl_weight=0.0
    )
    trainer = make_trainer(registry, tiny_base, config=careless, gate=gate)
    try:
        assert probes.prepared, "the tiny model must agree with its own answers"
        feedback(trainer, 3)
        result = trainer.update("alice")
        assert not result.promoted
        assert result.version.status == CANDIDATE
        assert "held back: probe retention" in result.version.status_reason
        assert registry.active_version("alice") is None
        # Its events are recorded as trained by that candidate, never silently lost.
        assert {e.outcome for e in trainer.log.events("alice")} == {"trained"}
    finally:
        trainer.close()


def test_gate_decisions_name_the_failing_check() -> None:
    gate = Gate(ProbeSuite([]), GateConfig(min_retention=0.95, user_tolerance=0.05))
    assert gate.decide(0.99, 1.00, 1.10).reason.startswith("promoted: probe retention 0.99")
    worse = gate.decide(0.99, 1.30, 1.10)
    assert not worse.passed and "held-back loss 1.300 > 1.100" in worse.reason
    assert not gate.decide(0.90, None, None).passed
    assert not gate.decide(1.0, float("nan"), 1.0).passed


@dataclass(frozen=True)
class ExplodingRule(SFTRule):
    """An SFT rule whose loss turns NaN, as a diverging update would."""

    def loss(self, examples, policy, reference):
        return super().loss(examples, policy, reference) * float("nan")


def test_non_finite_loss_rejects_the_batch_and_keeps_the_adapter(registry, tiny_base) -> None:
    trainer = make_trainer(registry, tiny_base)
    try:
        feedback(trainer, 2)
        good = trainer.update("alice").version
        trainer.rule = ExplodingRule()
        ids = feedback(trainer, 2)
        result = trainer.update("alice")
        assert result.version is None and "non-finite loss" in result.error
        events = {e.id: e for e in trainer.log.events("alice")}
        assert all(events[i].state == "rejected" for i in ids)
        assert all("non-finite loss" in events[i].outcome for i in ids)
        assert registry.active_version("alice").number == good.number
        assert [v.number for v in registry.versions("alice")] == [good.number]
    finally:
        trainer.close()


def test_a_broken_active_blob_is_rolled_back(registry, tiny_base) -> None:
    trainer = make_trainer(registry, tiny_base)
    try:
        feedback(trainer, 2)
        trainer.update("alice")
        feedback(trainer, 2)
        bad = trainer.update("alice").version
        (Path(bad.blob_path) / ADAPTER_WEIGHTS).write_bytes(b"corrupted")
        active = trainer.recheck("alice")
        assert active.number == 1 and active.status == ACTIVE
        rolled = registry.version("alice", bad.number)
        assert rolled.status == "rolled-back"
        assert "blob is missing or fails its sha256" in rolled.status_reason
        # The next update warm-starts from the good version, not the broken one.
        feedback(trainer, 1)
        assert trainer.update("alice").version.parent_number == 1
    finally:
        trainer.close()


def test_rollback_when_a_later_probe_check_fails(registry, tiny_base) -> None:
    trainer = make_trainer(registry, tiny_base)
    try:
        feedback(trainer, 2)
        trainer.update("alice")
        feedback(trainer, 2)
        trainer.update("alice")
        trainer.gate.config = GateConfig(min_retention=1.0)
        trainer.gate.probes.retention = lambda slot: 0.5  # the later check now fails
        assert trainer.recheck("alice").number == 1
        assert registry.version("alice", 2).status_reason.startswith(
            "rolled back to v1: probe retention 0.50 < 1.00"
        )
    finally:
        trainer.close()


def test_held_back_events_feed_the_gate(registry, tiny_base) -> None:
    config = OnlineConfig(steps=2, holdout_every=2, anchor_prompts=0, replay=0)
    trainer = make_trainer(registry, tiny_base, config=config)
    try:
        ids = feedback(trainer, 4)
        first = trainer.update("alice")
        outcomes = first.outcomes
        assert {outcomes[i] for i in ids if i % 2 == 0} == {"held-out"}
        assert {outcomes[i] for i in ids if i % 2} == {"trained"}
        assert first.gate.reference_user_loss is not None
        assert first.version.metrics["heldout_loss"] == pytest.approx(first.gate.user_loss)
    finally:
        trainer.close()


def test_background_worker_coalesces_events_that_arrive_during_a_step(registry, tiny_base) -> None:
    arrived: list[int] = []
    lock = threading.Lock()

    def during_step(step: int, _seconds: float) -> None:
        with lock:
            if not arrived:  # the first step of the first update: 3 more events arrive
                arrived.extend(feedback(trainer, 3))

    trainer = make_trainer(registry, tiny_base, on_step=during_step)
    try:
        first_ids = feedback(trainer, 2)
        worker = OnlineWorker(trainer, poll_seconds=0.05).start()
        worker.notify("alice")
        assert worker.wait_idle(timeout=120)
        versions = registry.versions("alice")
        assert len(versions) == 2
        consumed = {}
        for event in trainer.log.events("alice"):
            consumed.setdefault(event.outcome, []).append(event.id)
        assert sorted(consumed["trained"]) == sorted(first_ids + arrived)
        assert worker.failures == {}
    finally:
        worker.stop()
        trainer.close()


def test_published_blob_serves_exactly_what_was_trained(
    registry, tiny_base, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Parity with PEFT: the blob loaded by PeftModel gives the slot's logits."""
    from peft import PeftModel

    trainer = make_trainer(registry, tiny_base)
    try:
        feedback(trainer, 2)
        version = trainer.update("alice").version
        trainer.slot.load(version, registry.read_weights(version))
        encoded = encode_rows(
            tiny_base.tokenizer, [(({"role": "user", "content": "hi"},), "By bicycle.")], 64
        )
        with torch.no_grad():
            ours = trainer.slot.logits(encoded)
            fresh = load_base(str(tiny_model_dir), home=Home(tmp_path / "other"))
            served = PeftModel.from_pretrained(fresh.model, version.blob_path)
            theirs = served(
                input_ids=encoded.input_ids, attention_mask=encoded.attention_mask
            ).logits
            with served.disable_adapter():
                plain = served(input_ids=encoded.input_ids).logits
        assert torch.allclose(ours, theirs, atol=1e-5)
        assert not torch.allclose(theirs, plain, atol=1e-4)  # the adapter does something
    finally:
        trainer.close()


def test_probes_decided_by_a_near_tie_are_left_out_and_reported(tiny_base) -> None:
    prompts = ["What is the capital of France?", "Name three fruits.", "What is a noun?"]
    answers = generate(
        tiny_base.model, tiny_base.tokenizer, [as_messages(p) for p in prompts], max_new_tokens=8
    )
    slot = AdapterSlot(tiny_base, LoraSpec(rank=4))
    try:
        every = ProbeSuite(probes_from_answers(prompts, answers, words=3), min_margin=0.0)
        kept = every.prepare(slot).prepared
        assert kept and not every.fragile
        strict = ProbeSuite(every.probes, min_margin=1e9).prepare(slot)
        assert strict.prepared == [] and strict.fragile == [p.probe for p in kept]
        assert strict.retention(slot) == 1.0  # nothing left to lose
    finally:
        slot.model.unload()


def test_a_refused_update_is_halved_until_the_gate_passes(registry, tiny_base) -> None:
    trainer = make_trainer(registry, tiny_base, config=replace(FAST, holdout_every=0))
    verdicts = iter([0.5, 1.0])  # the full update loses probes, half of it does not
    trainer.gate.probes.retention = lambda slot: next(verdicts)
    try:
        feedback(trainer, 3)
        result = trainer.update("alice")
        assert result.promoted
        assert "update scaled by 0.5 to pass" in result.version.status_reason
        # What was published is the halved adapter: B of a fresh adapter starts at 0.
        saved = load_file(str(Path(result.version.blob_path) / "adapter_model.safetensors"))
        live = {k: v for k, v in trainer.slot.model.state_dict().items() if "lora_B" in k}
        for key, tensor in live.items():
            assert torch.equal(saved[key.replace(".default.weight", ".weight")], tensor)
            assert tensor.abs().sum() > 0
    finally:
        trainer.close()


def test_an_update_refused_even_halved_is_kept_whole_as_a_candidate(registry, tiny_base) -> None:
    trainer = make_trainer(registry, tiny_base, config=replace(FAST, holdout_every=0))
    verdicts = iter([0.25, 0.5])  # the full update, then half of it: both refused
    trainer.gate.probes.retention = lambda slot: next(verdicts)
    try:
        feedback(trainer, 3)
        result = trainer.update("alice")
        assert not result.promoted and result.version.status == CANDIDATE
        # The whole update is kept, with its own verdict.
        assert result.version.metrics["retention"] == 0.25
        assert "also refused scaled down to 0.5" in result.version.status_reason
    finally:
        trainer.close()
