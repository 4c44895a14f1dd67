"""Update rules: the loss formulas, which events each rule uses, and that each loss falls."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adaptkit.base_model import load_base
from adaptkit.feedback import Completion, EventBatch, FeedbackEvent
from adaptkit.home import Home
from adaptkit.learning import AdapterSlot, LoraSpec, StepConfig, losses, run_steps
from adaptkit.learning.rules import (
    ContrastRule,
    DistillRule,
    DPORule,
    Example,
    KTORule,
    RuleContext,
    SFTRule,
    teacher_messages,
)

ASK = ({"role": "user", "content": "How long to the library?"},)
COOK = ({"role": "user", "content": "What should I cook?"},)


def batch() -> EventBatch:
    requests = {
        1: Completion(1, "alice", ASK, "By car 10 minutes."),
        2: Completion(2, "alice", COOK, "A steak."),
    }
    events = (
        FeedbackEvent("alice", "edit", 1, text="By bicycle, 12 minutes.", id=1),
        FeedbackEvent("alice", "down", 2, id=2),
        FeedbackEvent("alice", "pair", 2, chosen="A lentil curry.", rejected="A steak.", id=3),
        FeedbackEvent("alice", "note", text="I always cycle", id=4),
        FeedbackEvent("alice", "accept", 1, id=5),
    )
    return EventBatch("alice", events, requests)


def test_dpo_matches_the_paper() -> None:
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-3.0, -5.0, -4.0, -4.5))
    expected = -F.logsigmoid(torch.tensor(0.1 * ((-3.0 + 5.0) - (-4.0 + 4.5))))
    assert torch.allclose(losses.dpo_loss(pc, pr, rc, rr, 0.1), expected)
    # Policy equal to the reference: log 2, the loss DPO starts from.
    assert math.isclose(losses.dpo_loss(rc, rr, rc, rr, 0.1).item(), math.log(2), rel_tol=1e-6)


def test_kto_matches_the_paper() -> None:
    policy, reference = torch.tensor([-2.0, -6.0]), torch.tensor([-3.0, -5.0])
    desirable = torch.tensor([True, False])
    z0 = torch.tensor(0.2)
    good = 1 - torch.sigmoid(torch.tensor(0.5 * (1.0 - 0.2)))
    bad = 1 - torch.sigmoid(torch.tensor(0.5 * (0.2 - (-1.0))))
    got = losses.kto_loss(policy, reference, desirable, z0, beta=0.5)
    assert torch.allclose(got, (good + bad) / 2)
    # A negative KL estimate is clamped to 0, as in the paper.
    assert torch.allclose(
        losses.kto_loss(policy, reference, desirable, torch.tensor(-1.0), 0.5),
        losses.kto_loss(policy, reference, desirable, torch.tensor(0.0), 0.5),
    )


def test_kl_is_zero_against_itself_and_positive_otherwise() -> None:
    logits = torch.randn(1, 4, 10)
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert losses.kl_to_reference(logits, torch.log_softmax(logits, -1), mask).abs() < 1e-6
    other = torch.log_softmax(torch.randn(1, 4, 10), -1)
    assert losses.kl_to_reference(logits, other, mask) > 0


def test_each_rule_says_what_it_did_with_every_event() -> None:
    context = RuleContext(teacher=lambda convs: ["By bike."] * len(convs))
    sft = SFTRule().select(batch(), context)
    assert [e.completion for e in sft.examples] == [
        "By bicycle, 12 minutes.",
        "A lentil curry.",
        "By car 10 minutes.",
    ]
    assert sft.outcomes[2].startswith("skipped: a thumbs-down has no target for sft")
    assert sft.outcomes[4].startswith("skipped: a note")
    dpo = DPORule().select(batch(), context)
    assert [(e.completion, e.rejected) for e in dpo.examples] == [
        ("By bicycle, 12 minutes.", "By car 10 minutes."),
        ("A lentil curry.", "A steak."),
    ]
    assert dpo.outcomes[5].startswith("skipped: a 'accept' event has no pair")
    kto = KTORule().select(batch(), context)
    assert [(e.completion, e.desirable) for e in kto.examples] == [
        ("By bicycle, 12 minutes.", True),
        ("By car 10 minutes.", False),
        ("A steak.", False),
        ("A lentil curry.", True),
        ("A steak.", False),
        ("By car 10 minutes.", True),
    ]
    distill = DistillRule().select(batch(), context)
    assert [e.messages for e in distill.examples] == [ASK, COOK]  # student: no context
    assert set(distill.outcomes.values()) == {"trained"}
    # contrast: sft's examples, each with the user's other answers (batch and history).
    history = [Example(COOK, "Soup."), Example(ASK, "A lentil curry.")]
    contrast = ContrastRule().select(batch(), RuleContext(history=history))
    assert contrast.outcomes == sft.outcomes
    assert [(e.completion, e.others) for e in contrast.examples] == [
        ("By bicycle, 12 minutes.", ("A lentil curry.", "By car 10 minutes.", "Soup.")),
        ("A lentil curry.", ("By bicycle, 12 minutes.", "By car 10 minutes.", "Soup.")),
        ("By car 10 minutes.", ("By bicycle, 12 minutes.", "A lentil curry.", "Soup.")),
    ]


def test_contrast_prefers_each_answer_over_another_request_s_answer() -> None:
    examples = [Example(ASK, "By bike.", others=("Soup.", "Tea.")), Example(COOK, "Soup.")]
    rule = ContrastRule(weight=0.5, beta=0.1)
    rows = rule.rows(examples)
    # both answers for sft, then one negative: only the example with others has a pair
    assert rows[:2] == [(ASK, "By bike."), (COOK, "Soup.")]
    assert len(rows) == 3 and rows[2][0] == ASK and rows[2][1] in ("Soup.", "Tea.")
    sums, counts = torch.tensor([-2.0, -3.0, -6.0]), torch.tensor([2, 3, 2])
    reference = (torch.tensor([-4.0, -3.5, -5.0]), counts)
    expected = losses.sft_loss(sums[:2], counts[:2]) + 0.5 * losses.dpo_loss(
        sums[:1], sums[2:], reference[0][:1], reference[0][2:], 0.1
    )
    assert torch.allclose(rule.loss(examples, (sums, counts), reference), expected)
    # a user's only answer has nothing to contrast with: plain sft
    alone = [Example(COOK, "Soup.")]
    assert rule.rows(alone) == [(COOK, "Soup.")]
    assert torch.allclose(
        rule.loss(alone, (sums[:1], counts[:1]), None), losses.sft_loss(sums[:1], counts[:1])
    )
    # a fresh negative each step
    drawn = {rule.rows(examples)[2][1] for _ in range(50)}
    assert drawn == {"Soup.", "Tea."}


def test_teacher_prompt_holds_notes_and_retrieved_history() -> None:
    from adaptkit.learning.rules import retrieve

    history = [Example(COOK, "Lentils."), Example(ASK, "Bike, 12 minutes.")]
    found = retrieve(history, "How long to the library from home?", 1)
    assert found == [history[1]]
    messages = teacher_messages(ASK, ["I always cycle"], found)
    assert messages[0]["role"] == "system"
    assert "- I always cycle" in messages[0]["content"]
    assert "Bike, 12 minutes." in messages[0]["content"]
    assert messages[1:] == list(ASK)


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_base(str(tiny_model_dir), home=Home(tmp_path_factory.mktemp("rules-home")))


@pytest.mark.parametrize(
    "rule", [SFTRule(), DPORule(beta=0.5), KTORule(beta=0.5), DistillRule(), ContrastRule(beta=0.5)]
)
def test_each_rule_trains_and_its_loss_falls(tiny_base, rule) -> None:
    slot = AdapterSlot(tiny_base, LoraSpec(rank=4))
    try:
        slot.reset()
        context = RuleContext(teacher=lambda convs: ["By bicycle, 12 minutes."] * len(convs))
        examples = rule.select(batch(), context).examples
        config = StepConfig(steps=12, lr=2e-2, max_length=96)
        before = [p.detach().clone() for p in slot.parameters()]
        history = run_steps(slot, rule, lambda _step: examples, config)
        assert all(math.isfinite(v) for v in history)
        assert history[-1] < history[0] - 1e-3, history
        assert any(not torch.equal(a, b) for a, b in zip(before, slot.parameters(), strict=True))
    finally:
        slot.model.unload()
