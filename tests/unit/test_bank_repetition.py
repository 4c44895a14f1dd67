"""Repetition control on logits: each batch row equals ``transformers``' processors run on
that row alone (HF's repetition penalty and n-gram ban; OpenAI's frequency and presence
penalties by their definition), whatever rows share the batch, join or leave it."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

from adaptkit.bank import Repetition, RepetitionState
from adaptkit.errors import InputError

VOCAB = 12


def alone(prompt: list[int], answer: list[int], setting: Repetition, logits: torch.Tensor):
    """One row's logits under ``setting``, computed as HF's processors and OpenAI's
    definition do for that row alone."""
    ids = torch.tensor([prompt + answer])
    scores = logits[None].clone()
    if setting.repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(setting.repetition_penalty)(ids, scores)
    counts = torch.bincount(torch.tensor(answer, dtype=torch.long), minlength=VOCAB).float()
    scores = scores - setting.frequency_penalty * counts
    scores = scores - setting.presence_penalty * (counts > 0)
    if setting.no_repeat_ngram_size:
        scores = NoRepeatNGramLogitsProcessor(setting.no_repeat_ngram_size)(ids, scores)
    return scores[0]


SETTINGS = [
    Repetition(),
    Repetition(repetition_penalty=1.5),
    Repetition(repetition_penalty=0.7, frequency_penalty=0.4),
    Repetition(no_repeat_ngram_size=2),
    Repetition(no_repeat_ngram_size=3, presence_penalty=1.1),
    Repetition(repetition_penalty=1.3, no_repeat_ngram_size=1, frequency_penalty=-0.5),
]


def random_rows(generator: torch.Generator, count: int) -> list[list[int]]:
    # Few distinct tokens, so n-grams and counts repeat; lengths differ (left filler).
    return [
        torch.randint(0, 5, (int(torch.randint(1, 9, (1,), generator=generator)),),
                      generator=generator).tolist()
        for _ in range(count)
    ]  # fmt: skip


def check(state: RepetitionState, prompts, answers, settings, generator) -> None:
    logits = torch.randn(len(prompts), VOCAB, generator=generator) * 3
    got = state.apply(logits)
    for row, (prompt, answer, setting) in enumerate(zip(prompts, answers, settings, strict=True)):
        expected = alone(prompt, answer, setting, logits[row])
        assert torch.equal(got[row], expected), (row, setting, prompt, answer)


def test_each_row_equals_the_processors_on_that_row_alone_while_rows_join_and_leave() -> None:
    generator = torch.Generator().manual_seed(0)
    prompts = random_rows(generator, len(SETTINGS))
    settings = list(SETTINGS)
    answers: list[list[int]] = [[] for _ in prompts]
    state = RepetitionState(prompts, settings)
    for step in range(12):
        check(state, prompts, answers, settings, generator)
        token = torch.randint(0, 5, (len(prompts),), generator=generator)
        state.append(token)
        for answer, chosen in zip(answers, token.tolist(), strict=True):
            answer.append(chosen)
        if step == 3:  # rows 0 and 2 leave; row 4 comes first now
            keep = [4, 1, 3, 5]
            state.select(torch.tensor(keep))
            prompts, answers, settings = (
                [prompts[i] for i in keep],
                [answers[i] for i in keep],
                [settings[i] for i in keep],
            )
        if step == 6:  # newcomers with their own prompts join mid-answer
            fresh = random_rows(generator, 2)
            joining = [Repetition(no_repeat_ngram_size=2), Repetition(repetition_penalty=2.0)]
            state.join(RepetitionState(fresh, joining))
            prompts, answers, settings = prompts + fresh, answers + [[], []], settings + joining


def test_controls_off_leave_the_logits_untouched() -> None:
    state = RepetitionState([[1, 2, 1], [3]], [Repetition(), Repetition()])
    logits = torch.randn(2, VOCAB)
    assert not state.active and state.apply(logits) is logits
    banned = RepetitionState([[1, 2, 1, 2]], [Repetition(no_repeat_ngram_size=2)])
    before = logits[:1].clone()
    after = banned.apply(logits[:1])
    assert torch.equal(logits[:1], before)  # a new tensor: the stream's logits stay
    assert after[0, 1] == float("-inf") and torch.isfinite(after[0, 2])


def test_no_ngram_is_found_across_the_left_filler() -> None:
    # Row 1 is one token long, left-filled with -1: filler must never form an n-gram.
    state = RepetitionState([[4, 4, 4, 4], [4]], [Repetition(no_repeat_ngram_size=2)] * 2)
    out = state.apply(torch.zeros(2, VOCAB))
    assert out[0, 4] == float("-inf")
    assert torch.isfinite(out[1]).all()


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(InputError, match="repetition_penalty must be a positive number"):
        Repetition(repetition_penalty=0.0)
    with pytest.raises(InputError, match="no_repeat_ngram_size must be an integer >= 0"):
        Repetition(no_repeat_ngram_size=-1)
    with pytest.raises(InputError, match=r"frequency_penalty must be in \[-2, 2\].*presence"):
        Repetition(frequency_penalty=3.0, presence_penalty=float("nan"))
