"""Decisions: which history records are a choice, their canonical target, the choice loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from adaptkit.base_model import load_base
from adaptkit.feedback import Completion, EventBatch, FeedbackEvent
from adaptkit.home import Home
from adaptkit.learning import AdapterSlot, LoraSpec, StepConfig, encode_rows, losses, run_steps
from adaptkit.learning.decisions import as_decisions, label_set, options
from adaptkit.learning.rules import Example, RuleContext, SFTRule, build_rule
from adaptkit.training import TrainConfig
from adaptkit.training.fit import _shuffled_batches

MENU = "Options:\nA. Beef burger\nB. Falafel wrap\nC. Chicken wings\n\nWhich dish?"
LUNCH = "Options:\n(1) Ham sandwich\n(2) Lentil soup\n\nPick a lunch."


def ask(text: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": text},)


def test_options_need_markers_in_order_at_line_starts() -> None:
    assert [o.marker for o in options(MENU)] == ["A", "B", "C"]
    assert options(MENU)[1].line == "B. Falafel wrap" and options(MENU)[1].text == "Falafel wrap"
    assert [o.text for o in options(LUNCH)] == ["Ham sandwich", "Lentil soup"]
    assert [o.marker for o in options("[1]: Paper one\n[2]: Paper two")] == ["1", "2"]
    # Sentences opening with a one-letter word are not options, nor is a lone option.
    assert options("I think so.\nA nice day.\nWhat now?") == []
    assert options("A. Only one\nWhat now?") == []
    assert options("A. One\nC. Skipped B") == []


def test_an_option_answer_becomes_the_option_text_with_the_others_as_choices() -> None:
    examples = [
        Example(ask(MENU), "I'd go with the falafel wrap, thanks."),
        Example(ask(LUNCH), "2"),
        Example(ask("Write a note to Sam."), "Hi Sam! Cheers, Priya"),
    ]
    got = as_decisions(examples)
    assert (got[0].completion, got[0].choices) == ("Falafel wrap", ("Beef burger", "Chicken wings"))
    assert (got[1].completion, got[1].choices) == ("Lentil soup", ("Ham sandwich",))
    assert got[2] == examples[2]  # not a decision: as written


def test_a_user_who_answers_with_bare_markers_keeps_them() -> None:
    assert [(e.completion, e.choices) for e in as_decisions([Example(ask(MENU), "B")])] == [
        ("B", ("A", "C"))
    ]
    # As the user writes them: the parentheses too, on every decision of the user.
    got = as_decisions([Example(ask(MENU), "(B)"), Example(ask(LUNCH), "(2)")])
    assert [(e.completion, e.choices) for e in got] == [
        ("(B)", ("(A)", "(C)")),
        ("(2)", ("(1)",)),
    ]


PREFEVAL = (
    "Where should I go?\n\n(A) Ski lodge\n(B) Beach villa\n(C) City flat\n(D) Farm stay\n\n"
    "Answer with the letter of one option: (A), (B), (C) or (D)."
)


def test_an_answer_giving_marker_and_text_is_learned_as_both_in_the_user_s_notation() -> None:
    got = as_decisions([Example(ask(PREFEVAL), "(B) Beach villa")])
    assert (got[0].completion, got[0].choices) == (
        "(B) Beach villa",
        ("(A) Ski lodge", "(C) City flat", "(D) Farm stay"),
    )
    # One answer naming both is enough: every option answer of the user takes that form,
    # bare markers and texts alike, in the notation the user writes ("C." here).
    examples = [
        Example(ask(MENU), "B"),
        Example(ask(LUNCH), "I'd go with the lentil soup"),
        Example(ask(MENU), "I'd go with C. Chicken wings, thanks."),
    ]
    got = as_decisions(examples)
    assert [e.completion for e in got] == ["B. Falafel wrap", "2. Lentil soup", "C. Chicken wings"]
    assert got[1].choices == ("1. Ham sandwich",)
    # A marker letter ending a word, or a marker not right before the text, is no marker.
    for answer in ("Club. Falafel wrap", "Plan B: the falafel wrap"):
        assert as_decisions([Example(ask(MENU), answer)])[0].completion == "Falafel wrap"


def test_an_answer_naming_no_option_or_two_is_not_a_decision() -> None:
    examples = [
        Example(ask(MENU), "Neither, I am not hungry."),
        Example(ask(MENU), "Beef burger or falafel wrap, either is fine."),
        Example(ask(MENU), "D"),
    ]
    assert as_decisions(examples) == examples


def test_short_answers_from_a_small_set_are_labels() -> None:
    assert label_set(["[3]", "[1]", "[3]", "[2]", "[1]", "[3]"]) == ("[3]", "[1]", "[2]")
    # Too few, or as many values as answers: not a label set.
    assert label_set(["[3]", "[1]"]) == ()
    assert label_set(["Yes", "No", "Maybe", "Never"]) == ()
    assert label_set(["Paris is the capital of France.", "4", "4"]) == ()
    rated = [Example(ask(f"Rate review {i}"), f" [{i % 3 + 1}] ") for i in range(6)]
    note = Example(ask("Write a haiku."), "Soft rain on the roof")
    got = as_decisions(rated, history=[note])
    assert [e.completion for e in got] == ["[1]", "[2]", "[3]", "[1]", "[2]", "[3]"]
    assert got[0].choices == ("[2]", "[3]")
    # The label set counts the history too: two new labels among six earlier ones.
    later = as_decisions([Example(ask("Rate review 9"), "[2]")], history=rated)
    assert later[0].choices == ("[1]", "[3]")


def test_choice_loss_is_the_cross_entropy_of_the_decision() -> None:
    target, others = torch.tensor(-1.0), torch.tensor([-2.0, -4.0])
    expected = -math.log(math.exp(-1.0) / (math.exp(-1.0) + math.exp(-2.0) + math.exp(-4.0)))
    assert math.isclose(losses.choice_loss(target, others).item(), expected, rel_tol=1e-6)
    # A sure choice costs nothing; an even one log(K + 1).
    assert losses.choice_loss(torch.tensor(0.0), torch.tensor([-100.0])).item() < 1e-6
    even = losses.choice_loss(torch.tensor(-3.0), torch.tensor([-3.0, -3.0]))
    assert math.isclose(even.item(), math.log(3), rel_tol=1e-6)


def _menu_batch() -> EventBatch:
    requests = {
        1: Completion(1, "mira", ask(MENU), "I'd go with B. Falafel wrap."),
        2: Completion(2, "mira", ask("Write a note to Sam."), "Hi Sam!"),
    }
    events = (FeedbackEvent("mira", "accept", 1, id=1), FeedbackEvent("mira", "accept", 2, id=2))
    return EventBatch("mira", events, requests)


def test_sft_rows_and_loss_with_and_without_decisions() -> None:
    plain = SFTRule().select(_menu_batch(), RuleContext())
    assert [e.completion for e in plain.examples] == ["I'd go with B. Falafel wrap.", "Hi Sam!"]
    rule = build_rule("sft", choice_weight=0.5)
    picked = rule.select(_menu_batch(), RuleContext())
    assert picked.outcomes == plain.outcomes
    rows = rule.rows(picked.examples)
    assert [c for _, c in rows] == [
        "B. Falafel wrap",
        "Hi Sam!",
        "A. Beef burger",
        "C. Chicken wings",
    ]
    sums, counts = torch.tensor([-2.0, -5.0, -3.0, -4.0]), torch.tensor([4, 3, 4, 5])
    expected = losses.sft_loss(sums[:2], counts[:2]) + 0.5 * losses.choice_loss(sums[0], sums[2:])
    assert torch.allclose(rule.loss(picked.examples, (sums, counts), None), expected)
    # Without decisions the rows and the loss are exactly plain sft's.
    assert SFTRule().rows(plain.examples) == [(e.messages, e.completion) for e in plain.examples]
    assert torch.equal(
        rule.loss(plain.examples, (sums[:2], counts[:2]), None),
        losses.sft_loss(sums[:2], counts[:2]),
    )


def test_word_dropout_leaves_a_decision_s_request_whole() -> None:
    examples = as_decisions([Example(ask(MENU), "B"), Example(ask("Tell me a b c d e f g"), "ok")])
    config = TrainConfig(steps=40, batch_size=2, word_dropout=0.6)
    batches = _shuffled_batches(examples, config)
    seen = [e.messages[-1]["content"] for step in range(40) for e in batches(step)]
    assert all(text == MENU for text in seen if "Options" in text)
    assert any(text != "Tell me a b c d e f g" for text in seen if "Options" not in text)


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_base(str(tiny_model_dir), home=Home(tmp_path_factory.mktemp("decisions-home")))


def test_training_on_decisions_makes_the_chosen_label_most_likely(tiny_base) -> None:
    rated = [Example(ask(f"Rate: {w}"), label) for w, label in [("good", "[3]"), ("bad", "[1]")]]
    examples = as_decisions(rated * 2)
    rule = build_rule("sft", choice_weight=1.0)
    slot = AdapterSlot(tiny_base, LoraSpec(rank=4))
    try:
        slot.reset()
        history = run_steps(
            slot, rule, lambda _step: examples, StepConfig(steps=30, lr=2e-2, max_length=48)
        )
        assert history[-1] < history[0] - 1e-3, history
        rows = rule.rows(examples[:2])  # good->[3], bad->[1], then their alternatives
        with torch.no_grad():
            sums, _ = slot.scored(encode_rows(tiny_base.tokenizer, rows, 48)).sequence_logps()
        assert sums[0] > sums[2] and sums[1] > sums[3]
    finally:
        slot.model.unload()


def test_a_log_trained_whole_counts_each_event_once() -> None:
    # Training on a whole log, the rule's history is the log itself: four different short
    # answers are no label set, however often the same events are passed.
    answers = [
        Example(ask(f"Q{i}"), a, event_id=i) for i, a in enumerate(["Yes", "No", "Hm", "Ok"])
    ]
    assert as_decisions(answers, history=answers) == answers
    rated = [Example(ask(f"Rate {i}"), f"[{i % 2}]", event_id=i) for i in range(4)]
    assert [e.choices for e in as_decisions(rated, history=rated)] == [("[1]",), ("[0]",)] * 2


def test_the_bundled_suite_holds_no_decision() -> None:
    # The arena learns decisions by default; on the bundled suite that changes nothing.
    from adaptkit.arena.episodes import load_episodes
    from adaptkit.arena.session import BUNDLED_SUITE

    suite = load_episodes(BUNDLED_SUITE)
    for records in suite.history.values():
        examples = [
            Example(
                ask(r.interaction.messages[-1].content), r.interaction.sft_target or "", event_id=i
            )
            for i, r in enumerate(records)
        ]
        assert as_decisions(examples) == examples
