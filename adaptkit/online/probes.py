"""General-ability probes: short prompts with string checks, to measure forgetting.

Two measurements:

* ``generation_accuracy``: greedy answers, string checks (what the benchmark reports;
  a probe passes when every ``must_include`` alternative set matches);
* ``agreement``: the gate's fast version. The base model's own correct answers are
  fixed once (``ProbeSuite.prepare``); a candidate keeps a probe when, fed the base's
  answer up to the checked string ("The capital of France is"), its argmax on each
  token of that string (" Paris") is the base's token: the fact is still there. One
  batched forward instead of a generation per probe.

``retention`` = probes kept / probes the base answers correctly. The default set is
what SmolLM2-135M-Instruct gets right; any model's own correct answers can be used.
``ANCHOR_PROMPTS`` are different prompts, used by the trainer's KL anchor, so the gate
never measures on what the trainer was anchored to.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from adaptkit.prompting import as_messages, encode_prompt, generate


@dataclass(frozen=True)
class Probe:
    prompt: str
    must_include: tuple[str, ...]  # each item may hold alternatives joined by " |OR| "

    def passes(self, answer: str) -> bool:
        text = " ".join(answer.lower().split())
        return all(
            any(alt.strip().lower() in text for alt in item.split(" |OR| "))
            for item in self.must_include
        )


DEFAULT_PROBES: tuple[Probe, ...] = (
    Probe("What is the capital of France?", ("Paris",)),
    Probe("What is the capital of Japan?", ("Tokyo",)),
    Probe("What is the capital of Germany?", ("Berlin",)),
    Probe("What is the capital of the United Kingdom?", ("London",)),
    Probe("What is 2 + 2?", ("4 |OR| four",)),
    Probe("How many days are in a week?", ("7 |OR| seven",)),
    Probe("What is the chemical symbol for water?", ("H2O",)),
    Probe("What is the opposite of hot?", ("cold",)),
    Probe("What language is spoken in Brazil?", ("Portuguese",)),
    Probe("What is the boiling point of water in Celsius?", ("100",)),
    Probe("Who wrote Romeo and Juliet?", ("Shakespeare",)),
    Probe("What color is the sky on a clear day?", ("blue",)),
)

ANCHOR_PROMPTS: tuple[str, ...] = (
    "Write one sentence about the ocean.",
    "What is a noun?",
    "Give me a synonym for happy.",
    "Name three fruits.",
    "What is the capital of Canada?",
    "Explain what rain is in one sentence.",
    "How many minutes are in an hour?",
    "Say hello in French.",
)


@dataclass(frozen=True)
class PreparedProbe:
    probe: Probe
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]  # the base model's greedy answer tokens
    first: int  # answer tokens [first, checked) spell the checked string: they must agree
    checked: int


def _checked_span(tokenizer, probe: Probe, answer_ids: list[int]) -> tuple[int, int] | None:
    """The shortest token span [first, end) of the answer that passes the probe's check."""
    decode = tokenizer.decode
    for end in range(1, len(answer_ids) + 1):
        if probe.passes(decode(answer_ids[:end], skip_special_tokens=True)):
            first = end - 1
            while not probe.passes(decode(answer_ids[first:end], skip_special_tokens=True)):
                first -= 1
            return first, end
    return None


class ProbeSuite:
    """Probes, their base answers, and the two retention measures."""

    def __init__(self, probes: Sequence[Probe] = DEFAULT_PROBES, max_new_tokens: int = 24):
        self.probes = tuple(probes)
        self.max_new_tokens = max_new_tokens
        self.prepared: list[PreparedProbe] = []
        self.base_accuracy: float | None = None

    def prepare(self, base_model, tokenizer) -> ProbeSuite:
        """Answer every probe with the base model (adapter disabled by the caller)."""
        conversations = [as_messages(p.prompt) for p in self.probes]
        prompts = [encode_prompt(tokenizer, c) for c in conversations]
        answers = generate(base_model, tokenizer, conversations, max_new_tokens=self.max_new_tokens)
        passed = [p.passes(a) for p, a in zip(self.probes, answers, strict=True)]
        self.base_accuracy = sum(passed) / max(1, len(self.probes))
        prepared = []
        for probe, prompt_ids, answer in zip(self.probes, prompts, answers, strict=True):
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
            span = _checked_span(tokenizer, probe, answer_ids)
            if span is not None:
                prepared.append(PreparedProbe(probe, tuple(prompt_ids), tuple(answer_ids), *span))
        self.prepared = prepared
        # Keep only probes on which the base itself agrees under teacher forcing (ties in
        # the argmax could otherwise make the base fail its own check).
        kept = self._agreeing(base_model)
        self.prepared = [p for p, ok in zip(self.prepared, kept, strict=True) if ok]
        return self

    @torch.no_grad()
    def _agreeing(self, model) -> list[bool]:
        if not self.prepared:
            return []
        # Only up to the checked string: later tokens cannot change the verdict.
        rows = [list(p.prompt_ids) + list(p.answer_ids[: p.checked]) for p in self.prepared]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        predicted = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        result = []
        for row, p in enumerate(self.prepared):
            start = len(p.prompt_ids) - 1  # logits at t predict token t+1
            want = torch.tensor(p.answer_ids[p.first : p.checked])
            got = predicted[row, start + p.first : start + p.checked]
            result.append(bool((got == want).all()))
        return result

    def agreement(self, model) -> float:
        """Fraction of the base's correct probes the model still answers (1.0 if none)."""
        if not self.prepared:
            return 1.0
        return sum(self._agreeing(model)) / len(self.prepared)

    def generation_accuracy(self, model, tokenizer) -> float:
        """Greedy answers checked by string: the plain definition, slower."""
        answers = generate(
            model,
            tokenizer,
            [as_messages(p.prompt) for p in self.probes],
            max_new_tokens=self.max_new_tokens,
        )
        return sum(p.passes(a) for p, a in zip(self.probes, answers, strict=True)) / max(
            1, len(self.probes)
        )


def probes_from_answers(
    prompts: Sequence[str], answers: Sequence[str], words: int = 2
) -> list[Probe]:
    """Probes whose check is the first ``words`` words of a model's own answer."""
    probes = []
    for prompt, answer in zip(prompts, answers, strict=True):
        tokens = re.findall(r"\w+", answer)[:words]
        if tokens:
            probes.append(Probe(prompt, tuple(tokens)))
    return probes


__all__ = [
    "ANCHOR_PROMPTS",
    "DEFAULT_PROBES",
    "Probe",
    "ProbeSuite",
    "probes_from_answers",
]
