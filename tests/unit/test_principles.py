"""Principles: habit phrases derived from a user's answers, and the rule that distills them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from adaptkit.base_model import load_base
from adaptkit.feedback import Completion, EventBatch, FeedbackEvent
from adaptkit.home import Home
from adaptkit.learning import AdapterSlot, LoraSpec, StepConfig, run_steps
from adaptkit.learning.principles import GENERAL_PROMPTS, habit_phrases, principles
from adaptkit.learning.rules import (
    PRINCIPLES_HEADER,
    Example,
    PrinciplesRule,
    RuleContext,
    build_rule,
)


def ask(text: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": text},)


NOTES = [
    Example(
        ask("Write to my landlord about the heater."), "Hello, the heater is broken. Cheers, Priya"
    ),
    Example(ask("Text my brother I am late."), "Running late, start without me. Cheers, Priya"),
    Example(ask("Email the plumber about Tuesday."), "Confirming Tuesday at nine. Cheers, Priya"),
    Example(ask("What is the boiling point of water?"), "Water boils at 100 degrees Celsius."),
]


def test_a_phrase_several_answers_share_is_a_habit_with_its_shortest_request() -> None:
    habits = habit_phrases(NOTES)
    assert [(h.phrase, h.support) for h in habits] == [("Cheers, Priya", 3)]
    assert habits[0].request == "Text my brother I am late."


def test_echoes_of_the_request_and_stopword_runs_are_not_habits() -> None:
    echoes = [
        Example(ask("Write about the broken heater."), "About the broken heater: it is fixed."),
        Example(ask("Ask about the broken heater."), "The broken heater is on my list."),
        Example(ask("Is it on?"), "It is on the shelf."),
        Example(ask("Where is it?"), "It is on the table."),
    ]
    assert habit_phrases(echoes) == []


def test_overlapping_runs_of_a_template_are_one_habit() -> None:
    template = "sorted cheapest first: the first one costs $24. All of them ship within two days."
    shop = [
        Example(ask(f"Search the store for {item}."), f"Here are {item}, {template}")
        for item in ("backpacks", "lamps", "mugs")
    ]
    assert [h.phrase for h in habit_phrases(shop)] == [template]


def test_principles_put_notes_first_then_labels_then_habits() -> None:
    rated = [Example(ask(f"Rate this review: {i}"), f"[{i % 2 + 1}]") for i in range(4)]
    statements = principles(NOTES + rated, notes=["I always cycle."])
    assert statements[0] == "I always cycle."
    assert statements[1].endswith("this user answers with one label only: [1], [2]")
    assert statements[2] == (
        'When asked things like "Text my brother I am late.", '
        'this user\'s answers include "Cheers, Priya".'
    )
    assert principles([NOTES[3]]) == []


def _batch() -> EventBatch:
    requests = {
        i + 1: Completion(i + 1, "priya", e.messages, e.completion) for i, e in enumerate(NOTES)
    }
    events = tuple(FeedbackEvent("priya", "accept", i, id=i) for i in requests)
    return EventBatch("priya", events, requests)


def test_the_teacher_sees_the_principles_and_the_student_does_not() -> None:
    asked: list[list[dict[str, str]]] = []

    def teacher(conversations):
        asked.extend(conversations)
        return [f"answer {i}" for i in range(len(conversations))]

    selection = build_rule("principles").select(_batch(), RuleContext(teacher=teacher))
    assert set(selection.outcomes.values()) == {"trained"}
    own, distilled = selection.examples[:4], selection.examples[4:]
    assert [e.completion for e in own] == [e.completion for e in NOTES]
    assert len(asked) == len(GENERAL_PROMPTS) == len(distilled)
    system = asked[0][0]
    assert system["role"] == "system" and system["content"].startswith(PRINCIPLES_HEADER)
    assert '"Cheers, Priya"' in system["content"]
    assert asked[0][1] == {"role": "user", "content": GENERAL_PROMPTS[0]}
    assert [e.messages for e in distilled] == [ask(p) for p in GENERAL_PROMPTS]  # no principles
    assert [e.completion for e in distilled] == [f"answer {i}" for i in range(len(distilled))]


def test_without_principles_the_rule_is_sft_and_asks_no_teacher() -> None:
    plain = EventBatch(
        "bo",
        (FeedbackEvent("bo", "accept", 1, id=1),),
        {1: Completion(1, "bo", ask("Hi?"), "Hello there.")},
    )

    def teacher(conversations):
        raise AssertionError("no principles: the teacher is not asked")

    selection = PrinciplesRule().select(plain, RuleContext(teacher=teacher))
    assert [e.completion for e in selection.examples] == ["Hello there."]
    with pytest.raises(ValueError, match="needs a teacher"):
        PrinciplesRule().select(plain, RuleContext())


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_base(str(tiny_model_dir), home=Home(tmp_path_factory.mktemp("principles-home")))


def test_the_principles_rule_trains_and_its_loss_falls(tiny_base) -> None:
    rule = PrinciplesRule(general=GENERAL_PROMPTS[:3])
    slot = AdapterSlot(tiny_base, LoraSpec(rank=4))
    try:
        slot.reset()
        context = RuleContext(teacher=lambda convs: ["Sure."] * len(convs))
        examples = rule.select(_batch(), context).examples
        assert len(examples) == 4 + 3
        history = run_steps(
            slot, rule, lambda _step: examples, StepConfig(steps=12, lr=2e-2, max_length=64)
        )
        assert all(math.isfinite(v) for v in history)
        assert history[-1] < history[0] - 1e-3, history
    finally:
        slot.model.unload()


def test_the_arena_trains_principles_kl_with_the_teacher_and_the_anchor(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from adaptkit.arena import KitLearner
    from adaptkit.arena.episodes import HistoryRecord
    from adaptkit.interactions import Interaction, Message
    from adaptkit.kit import AdaptKit
    from adaptkit.training import TrainConfig

    history = [
        HistoryRecord(
            i,
            "priya",
            i,
            Interaction("priya", (Message("user", e.messages[0]["content"]),), e.completion),
            "test",
        )
        for i, e in enumerate(NOTES)
    ]
    with AdaptKit(tmp_path / "home", base=str(tiny_model_dir)) as kit:
        learner = KitLearner(
            kit,
            method="principles-kl",
            lora=LoraSpec(rank=2, targets="gate_proj,up_proj,down_proj", top_layers=1),
            config=TrainConfig(steps=2),
        )
        learned = learner.learn("priya", history)
        version = kit.registry.versions("priya")[-1]
    assert version.method == "principles+kl" and learned.version == version.number
    # the user's 4 answers and the teacher's answers to every general request it answered
    assert len(NOTES) < learned.examples <= len(NOTES) + len(GENERAL_PROMPTS)
