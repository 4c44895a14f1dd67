"""Request word dropout: what it drops, what it keeps, and that training sees it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import adaptkit.training.fit as fit_module
from adaptkit.base_model import load_base
from adaptkit.errors import InputError
from adaptkit.home import Home
from adaptkit.interactions import read_log
from adaptkit.learning import LoraSpec, RequestDropout
from adaptkit.training import Fitter, TrainConfig
from conftest import EXAMPLES

REQUEST = "Search the store for backpacks please, my friend."
ANSWER = "Here are Adidas backpacks, sorted cheapest first."


def test_rate_zero_is_the_identity() -> None:
    assert RequestDropout(0.0).request(REQUEST, ANSWER, random.Random(0)) == REQUEST


def test_words_the_answer_repeats_are_always_kept() -> None:
    dropout = RequestDropout(0.9)
    rng = random.Random(0)
    for _ in range(200):
        thinned = dropout.request(REQUEST, ANSWER, rng).split()
        assert "backpacks" in thinned  # "backpacks," in the answer: punctuation ignored
        assert thinned == [w for w in REQUEST.split() if w in thinned]  # order kept


def test_other_words_are_dropped_at_the_rate() -> None:
    dropout = RequestDropout(0.3)
    rng = random.Random(1)
    droppable = [w for w in REQUEST.split() if w != "backpacks"]
    draws = 2000
    dropped = 0
    for _ in range(draws):
        kept = dropout.request(REQUEST, ANSWER, rng).split()
        dropped += sum(1 for w in droppable if w not in kept)
    assert dropped / (draws * len(droppable)) == pytest.approx(0.3, abs=0.02)


def test_a_request_never_comes_out_empty() -> None:
    dropout = RequestDropout(0.99)
    rng = random.Random(2)
    for _ in range(100):
        assert dropout.request("Directions to the zoo", "Go left.", rng).strip()
        assert dropout.request("Hello", "Hi.", rng) == "Hello"  # one word: nothing to drop


def test_only_the_last_user_turn_is_thinned_and_the_input_is_untouched() -> None:
    messages = (
        {"role": "system", "content": "Be brief and kind to everyone."},
        {"role": "user", "content": "First question about the weather today."},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "Second question about the long train ride home."},
    )
    original = [dict(m) for m in messages]
    rng = random.Random(3)
    changed = False
    for _ in range(20):
        thinned = RequestDropout(0.5).messages(messages, "Fine.", rng)
        assert thinned[:3] == messages[:3]
        changed |= thinned[3]["content"] != messages[3]["content"]
    assert changed
    assert [dict(m) for m in messages] == original


def test_rates_outside_zero_to_one_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\), got 1.0"):
        RequestDropout(1.0)
    with pytest.raises(InputError, match=r"--word-dropout must be in \[0, 1\), got -0.1"):
        TrainConfig(word_dropout=-0.1)


def test_training_sees_thinned_requests_and_still_learns(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = load_base(str(tiny_model_dir), home=Home(tmp_path).ensure())
    interactions = read_log(EXAMPLES / "alice.jsonl")
    asked = {i.messages[-1].content for i in interactions}
    seen: list[str] = []
    run_steps = fit_module.run_steps

    def recording(slot, rule, batches, config, **options):
        def spied(step: int):
            batch = batches(step)
            seen.extend(example.messages[-1]["content"] for example in batch)
            return batch

        return run_steps(slot, rule, spied, config, **options)

    monkeypatch.setattr(fit_module, "run_steps", recording)
    out = tmp_path / "adapter"
    out.mkdir()
    trained = Fitter(base).fit(
        interactions,
        "sft",
        LoraSpec(rank=4, alpha=8),
        TrainConfig(steps=60, lr=3e-2, batch_size=4, word_dropout=0.3),
        out,
        progress=False,
    )
    assert len(seen) == 60 * 4
    assert sum(text not in asked for text in seen) > len(seen) / 2
    assert trained.metrics["loss_last"] < 0.7 * trained.metrics["loss_first"]
