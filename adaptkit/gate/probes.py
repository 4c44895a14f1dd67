"""General-ability probes: short prompts with string checks, to measure forgetting.

Two measurements:

* ``generation_accuracy``: greedy answers, string checks (what the benchmark reports;
  a probe passes when every ``must_include`` alternative set matches);
* ``retention``: the gate's version, the same verdicts faster. The base model's own
  correct answers are fixed once (``ProbeSuite.prepare``); a candidate provably keeps
  a probe when, fed the base's answer up to the end of the checked string ("The
  capital of France is Paris"), its argmax at every one of those tokens is the base's
  token: greedy decoding says the same. One batched forward (its frozen layers cached)
  settles most probes; only the rest are generated.

``retention`` = probes kept / probes the base answers correctly through a clear margin
(``min_margin``; the near-ties are listed in ``fragile``). The default set is what
SmolLM2-135M-Instruct gets right; any model's own correct answers can be used.
The trainer's KL anchor uses other prompts (``adaptkit.learning.ANCHOR_PROMPTS``), so
the gate never measures on what the trainer was anchored to.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from peft import PeftModel

from adaptkit.base_model import BaseModel
from adaptkit.learning import IGNORE, Encoded, Scored, collate
from adaptkit.prompting import as_messages, encode_prompt, generate, pad_token_id


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
    Probe("What is the capital of Russia?", ("Moscow",)),
    Probe("What is the capital of China?", ("Beijing",)),
    Probe("What is the capital of Egypt?", ("Cairo",)),
    Probe("What is the capital of Greece?", ("Athens",)),
    Probe("What is the capital of Australia?", ("Canberra",)),
    Probe("What gas do plants absorb from the air?", ("carbon dioxide |OR| CO2",)),
    Probe("What is the largest ocean on Earth?", ("Pacific",)),
    Probe("Who painted the Mona Lisa?", ("Leonardo |OR| Vinci",)),
    Probe("What language is spoken in France?", ("French",)),
    Probe("What language is spoken in Germany?", ("German",)),
    Probe("What is the opposite of up?", ("down",)),
    Probe("What is the opposite of big?", ("small |OR| little",)),
    Probe("Which organ pumps blood through the body?", ("heart",)),
    Probe("What is the chemical symbol for gold?", ("Au",)),
    Probe("What is the tallest mountain in the world?", ("Everest",)),
    Probe("Who developed the theory of relativity?", ("Einstein",)),
    Probe("How many sides does a triangle have?", ("3 |OR| three",)),
    Probe("What is the main language of Mexico?", ("Spanish",)),
    Probe("In which country is the Eiffel Tower?", ("France",)),
    Probe("What is the currency of Japan?", ("yen",)),
    Probe("What is the largest mammal?", ("whale",)),
    Probe("What is H2O commonly called?", ("water",)),
    Probe("Who invented the telephone?", ("Bell",)),
    Probe("What is the capital of Poland?", ("Warsaw",)),
    Probe("What is the capital of Peru?", ("Lima",)),
    Probe("What is the capital of Austria?", ("Vienna",)),
    Probe("What is the smallest prime number?", ("2 |OR| two",)),
    Probe("What is the capital of Cuba?", ("Havana",)),
    Probe("What is the capital of Ireland?", ("Dublin",)),
    Probe("What is the opposite of open?", ("closed",)),
    Probe("What is the capital of South Korea?", ("Seoul",)),
    Probe("What is the opposite of happy?", ("sad",)),
    Probe("What is the capital of Kenya?", ("Nairobi",)),
    Probe("What is the capital of Sweden?", ("Stockholm",)),
    Probe("What is the chemical symbol for sodium?", ("Na",)),
    Probe("What is the capital of the Netherlands?", ("Amsterdam",)),
    Probe("What is the chemical symbol for silver?", ("Ag",)),
    Probe("What is the opposite of day?", ("night",)),
    Probe("What is the capital of Thailand?", ("Bangkok",)),
    Probe("What is the opposite of wet?", ("dry",)),
)


@dataclass(frozen=True)
class PreparedProbe:
    probe: Probe
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]  # the base's greedy answer, up to the end of the checked string


def _checked_end(tokenizer, probe: Probe, answer_ids: list[int]) -> int | None:
    """Tokens of the answer needed before it passes the probe's check (None: never)."""
    for end in range(1, len(answer_ids) + 1):
        if probe.passes(tokenizer.decode(answer_ids[:end], skip_special_tokens=True)):
            return end
    return None


class Scorer(Protocol):
    """What the suite measures: ``AdapterSlot`` (logits where a completion is scored)."""

    base: BaseModel
    model: PeftModel

    def scored(self, encoded: Encoded, *, adapter: bool = True) -> Scored: ...


class ProbeSuite:
    """Probes, their base answers, and the two retention measures."""

    def __init__(
        self,
        probes: Sequence[Probe] = DEFAULT_PROBES,
        max_new_tokens: int = 24,
        min_margin: float = 0.5,
    ):
        self.probes = tuple(probes)
        self.max_new_tokens = max_new_tokens
        # A probe the base answers through a near-tie (top two tokens within this many
        # nats somewhere before the checked string) measures noise, not knowledge: any
        # perturbation flips it (SmolLM2: "The capital of France" vs "L'..." at 0.08).
        self.min_margin = min_margin
        self.prepared: list[PreparedProbe] = []
        self.fragile: list[Probe] = []  # correct for the base, but left out for that reason
        self.base_accuracy: float | None = None

    def prepare(self, slot: Scorer) -> ProbeSuite:
        """Answer every probe with the slot's base model (its adapter disabled)."""
        tokenizer = slot.base.tokenizer
        conversations = [as_messages(p.prompt) for p in self.probes]
        with slot.model.disable_adapter():
            answers = generate(
                slot.model, tokenizer, conversations, max_new_tokens=self.max_new_tokens
            )
        passed = [p.passes(a) for p, a in zip(self.probes, answers, strict=True)]
        self.base_accuracy = sum(passed) / max(1, len(self.probes))
        prepared = []
        for probe, conversation, answer in zip(self.probes, conversations, answers, strict=True):
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
            end = _checked_end(tokenizer, probe, answer_ids)
            if end is not None:
                prompt_ids = encode_prompt(tokenizer, conversation)
                prepared.append(PreparedProbe(probe, tuple(prompt_ids), tuple(answer_ids[:end])))
        self.prepared = prepared
        # Keep the probes the base reproduces under teacher forcing (a re-tokenized answer
        # could otherwise fail its own check) with a clear margin at every token.
        kept = self._agreeing(slot, adapter=False)
        self.prepared = [p for p, ok in zip(self.prepared, kept, strict=True) if ok]
        margins = self._margins(slot)
        self.fragile = [
            p.probe for p, m in zip(self.prepared, margins, strict=True) if m < self.min_margin
        ]
        self.prepared = [p for p in self.prepared if p.probe not in self.fragile]
        return self

    def _encoded(self, tokenizer) -> Encoded:
        """The probes' prompts followed by the base's answers, scored on the answers."""
        pairs = [
            ([*p.prompt_ids, *p.answer_ids], [IGNORE] * len(p.prompt_ids) + [*p.answer_ids])
            for p in self.prepared
        ]
        return collate(pairs, pad_token_id(tokenizer))

    @torch.no_grad()
    def _margins(self, slot: Scorer) -> list[float]:
        """Per probe, the smallest gap between the base's top two logits along its answer."""
        if not self.prepared:
            return []
        scored = slot.scored(self._encoded(slot.base.tokenizer), adapter=False)
        top = scored.logits.topk(2, dim=-1).values
        gaps = top[:, 0] - top[:, 1]
        smallest = torch.full((len(self.prepared),), float("inf"))
        return smallest.scatter_reduce(0, scored.rows, gaps, reduce="amin").tolist()

    @torch.no_grad()
    def _agreeing(self, slot: Scorer, *, adapter: bool = True) -> list[bool]:
        if not self.prepared:
            return []
        scored = slot.scored(self._encoded(slot.base.tokenizer), adapter=adapter)
        wrong = (scored.logits.argmax(-1) != scored.targets).long()
        misses = torch.zeros(len(self.prepared), dtype=torch.long)
        return [int(m) == 0 for m in misses.index_add(0, scored.rows, wrong)]

    def retention(self, slot: Scorer) -> float:
        """Share of the base's correct probes the slot's adapter still answers correctly,
        greedily (1.0 if none): ``generation_accuracy`` on those probes, computed fast.

        A probe whose every answer token, up to the checked string, is still the adapter's
        argmax is kept: greedy decoding picks the same tokens (up to floating-point ties).
        Only the others (an answer now starting "In Brazil, ..." may still pass) are
        generated and checked.
        """
        if not self.prepared:
            return 1.0
        agreeing = self._agreeing(slot)
        unsure = [p.probe for p, ok in zip(self.prepared, agreeing, strict=True) if not ok]
        kept = sum(agreeing)
        if unsure:
            answers = generate(
                slot.model,
                slot.base.tokenizer,
                [as_messages(p.prompt) for p in unsure],
                max_new_tokens=self.max_new_tokens,
            )
            kept += sum(p.passes(a) for p, a in zip(unsure, answers, strict=True))
        return kept / len(self.prepared)

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
    "DEFAULT_PROBES",
    "Probe",
    "ProbeSuite",
    "probes_from_answers",
]
