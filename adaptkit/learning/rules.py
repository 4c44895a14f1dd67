"""Update rules: which feedback events a rule learns from, and the loss it puts on them.

======== ===================================================== ===============================
rule     learns from                                           use it when
======== ===================================================== ===============================
sft      accepted / thumbs-up answers, edits, chosen of a pair  the default: cheap, stable; the
         (loss on the assistant's tokens only)                 user mostly accepts or corrects
dpo      pairs: (edit, original) and (chosen, rejected)        users edit or pick between two
                                                               answers: learn the *difference*
kto      unpaired thumbs up / down (and both sides of edits    only binary ratings arrive; the
         and pairs, as separate good / bad answers)            one rule that uses thumbs-down
distill  answers of a teacher (the base model with the user's  users state principles ("I always
         notes and retrieved history in its prompt), learned   cycle"): internalize them so the
         by the adapter *without* that context (off-policy)    prompt needs no memory
contrast what sft learns from, plus DPO of each answer over    a user's answers follow a few
         the user's answer to another request                  templates: answer *this* request
princi-  what sft learns from, plus a teacher's answers to      habits should carry over to new
ples     general requests, the teacher having the user's        kinds of request and stay out
         principles (derived from their answers) in its prompt  of unrelated ones
======== ===================================================== ===============================

``sft`` and ``principles`` take ``choice_weight``: answers that are a decision (an option
picked, a label of the user's small set) are learned as that decision
(``learning.decisions``).

Every event gets an outcome: ``trained`` or ``skipped: <why>`` (e.g. a thumbs-down
under ``sft`` says what is wrong but not what is right). Nothing is dropped silently.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from torch import Tensor

from adaptkit.feedback import Completion, EventBatch, FeedbackEvent
from adaptkit.learning import losses
from adaptkit.learning.decisions import as_decisions, one_per_event
from adaptkit.learning.principles import GENERAL_PROMPTS, principles
from adaptkit.retrieval import BM25Retriever

Messages = tuple[dict[str, str], ...]
# (conversations) -> greedy answers of the teacher (the base model, adapter disabled)
Teacher = Callable[[list[list[dict[str, str]]]], list[str]]

TRAINED = "trained"


@dataclass(frozen=True)
class Example:
    """One training example derived from feedback."""

    messages: Messages  # the prompt the adapter sees
    completion: str  # the answer to learn (sft/distill), the preferred one (dpo), or judged (kto)
    rejected: str | None = None  # dpo: the dispreferred answer
    desirable: bool = True  # kto: thumbs up (True) or down (False)
    event_id: int | None = None
    others: tuple[str, ...] = ()  # contrast: the user's answers to other requests
    choices: tuple[str, ...] = ()  # a decision: the answers it was chosen over (decisions)


@dataclass(frozen=True)
class Selection:
    examples: list[Example]
    outcomes: dict[int, str]  # event id -> "trained" | "skipped: <why>"


@dataclass
class RuleContext:
    """What a rule may need beyond the batch: the user's notes, history, and a teacher."""

    notes: list[str] = field(default_factory=list)
    history: list[Example] = field(default_factory=list)  # earlier trained examples
    teacher: Teacher | None = None
    history_k: int = 2  # retrieved history records in the teacher's prompt


class UpdateRule(Protocol):
    name: str
    needs_reference: bool  # whether loss() needs the reference (adapter-disabled) log-probs

    def select(self, batch: EventBatch, context: RuleContext) -> Selection: ...

    def rows(self, examples: Sequence[Example]) -> list[tuple[Messages, str]]:
        """The (prompt, completion) sequences whose log-probs the loss needs."""
        ...

    def loss(
        self,
        examples: Sequence[Example],
        policy: tuple[Tensor, Tensor],
        reference: tuple[Tensor, Tensor] | None,
    ) -> Tensor:
        """``policy``/``reference``: (summed log-probs, token counts) of ``rows``, in order."""
        ...


def _request(batch: EventBatch, event: FeedbackEvent) -> Completion | None:
    return batch.requests.get(event.request_id) if event.request_id is not None else None


def _good_answer(event: FeedbackEvent, request: Completion) -> str | None:
    """What the user wants for this request, if the event says so."""
    if event.kind in ("accept", "up"):
        return request.response
    if event.kind == "edit":
        return event.text
    if event.kind == "pair":
        return event.chosen
    return None


def history_examples(batch: EventBatch) -> list[Example]:
    """SFT examples of a batch of already-trained events (the replay pool)."""
    examples = []
    for event in batch.events:
        request = _request(batch, event)
        answer = _good_answer(event, request) if request else None
        if answer:
            examples.append(Example(request.messages, answer, event_id=event.id))
    return examples


NOTE_KEPT = "skipped: a note trains only through the distill rule (kept as its context)"


@dataclass(frozen=True)
class SFTRule:
    """Supervised fine-tuning on the answers the user accepted, wrote or chose.

    ``choice_weight`` > 0: records whose answer is a decision (an option picked, a label
    from the user's small set: ``learning.decisions``) are trained on the decision in a
    short canonical form, plus ``choice_weight`` times the cross-entropy of that decision
    against the alternatives. 0 trains every answer as written.
    """

    choice_weight: float = 0.0
    name: str = "sft"
    needs_reference: bool = False

    def select(self, batch: EventBatch, context: RuleContext) -> Selection:
        selection = self._answers(batch)
        if self.choice_weight <= 0:
            return selection
        return Selection(as_decisions(selection.examples, context.history), selection.outcomes)

    def _answers(self, batch: EventBatch) -> Selection:
        examples, outcomes = [], {}
        for event in batch.events:
            request = _request(batch, event)
            answer = _good_answer(event, request) if request else None
            if event.kind == "note":
                outcomes[event.id] = NOTE_KEPT
            elif answer is None:
                outcomes[event.id] = "skipped: a thumbs-down has no target for sft; use kto"
            else:
                examples.append(Example(request.messages, answer, event_id=event.id))
                outcomes[event.id] = TRAINED
        return Selection(examples, outcomes)

    def rows(self, examples: Sequence[Example]) -> list[tuple[Messages, str]]:
        own = [(e.messages, e.completion) for e in examples]
        return own + [(e.messages, choice) for e in examples for choice in e.choices]

    def loss(self, examples, policy, reference) -> Tensor:
        n = len(examples)
        sums, counts = policy
        loss = losses.sft_loss(sums[:n], counts[:n])
        if len(sums) == n:  # no decisions among the examples
            return loss
        return loss + self.choice_weight * _choice_term(examples, sums)


def _choice_term(examples: Sequence[Example], sums: Tensor) -> Tensor:
    """Mean choice loss of the decisions; their alternatives' rows follow the n own rows."""
    terms, row = [], len(examples)
    for index, example in enumerate(examples):
        if example.choices:
            others = sums[row : row + len(example.choices)]
            terms.append(losses.choice_loss(sums[index], others))
            row += len(example.choices)
    return torch.stack(terms).mean()


@dataclass(frozen=True)
class DPORule:
    """DPO on preference pairs; the reference is the base model (the adapter disabled)."""

    beta: float = 0.1
    name: str = "dpo"
    needs_reference: bool = True

    def select(self, batch: EventBatch, context: RuleContext) -> Selection:
        examples, outcomes = [], {}
        for event in batch.events:
            request = _request(batch, event)
            if event.kind == "edit" and request is not None:
                pair = (event.text, request.response)
            elif event.kind == "pair" and request is not None:
                pair = (event.chosen, event.rejected)
            else:
                outcomes[event.id] = (
                    NOTE_KEPT
                    if event.kind == "note"
                    else f"skipped: a {event.kind!r} event has no pair for dpo; use sft or kto"
                )
                continue
            examples.append(Example(request.messages, pair[0], rejected=pair[1], event_id=event.id))
            outcomes[event.id] = TRAINED
        return Selection(examples, outcomes)

    def rows(self, examples: Sequence[Example]) -> list[tuple[Messages, str]]:
        chosen = [(e.messages, e.completion) for e in examples]
        rejected = [(e.messages, e.rejected or "") for e in examples]
        return chosen + rejected

    def loss(self, examples, policy, reference) -> Tensor:
        n = len(examples)
        sums, ref = policy[0], reference[0]
        return losses.dpo_loss(sums[:n], sums[n:], ref[:n], ref[n:], self.beta)


@dataclass(frozen=True)
class KTORule:
    """KTO on unpaired good / bad answers (thumbs), the reference being the base model.

    The reference point z0 = KL(policy || reference) is estimated, as in the paper and
    TRL, on mismatched pairs: prompt i with the completion of row i+1.
    """

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    name: str = "kto"
    needs_reference: bool = True

    def select(self, batch: EventBatch, context: RuleContext) -> Selection:
        examples, outcomes = [], {}
        for event in batch.events:
            request = _request(batch, event)
            if request is None:
                outcomes[event.id] = NOTE_KEPT
                continue
            judged: list[tuple[str, bool]] = {
                "accept": [(request.response, True)],
                "up": [(request.response, True)],
                "down": [(request.response, False)],
                "edit": [(event.text or "", True), (request.response, False)],
                "pair": [(event.chosen or "", True), (event.rejected or "", False)],
            }[event.kind]
            for answer, good in judged:
                examples.append(
                    Example(request.messages, answer, desirable=good, event_id=event.id)
                )
            outcomes[event.id] = TRAINED
        return Selection(examples, outcomes)

    def rows(self, examples: Sequence[Example]) -> list[tuple[Messages, str]]:
        own = [(e.messages, e.completion) for e in examples]
        shifted = examples[1:] + examples[:1]
        mismatched = [(e.messages, s.completion) for e, s in zip(examples, shifted, strict=True)]
        return own + (mismatched if len(examples) > 1 else [])

    def loss(self, examples, policy, reference) -> Tensor:
        n = len(examples)
        sums, ref = policy[0], reference[0]
        # One example has no mismatched pair to estimate z0 from: use 0 (TRL's calculate_KL=False).
        kl = (sums[n:] - ref[n:]).mean().detach() if len(sums) > n else sums.new_zeros(())
        desirable = torch.tensor([e.desirable for e in examples])
        return losses.kto_loss(
            sums[:n],
            ref[:n],
            desirable,
            kl,
            self.beta,
            self.desirable_weight,
            self.undesirable_weight,
        )


@dataclass
class ContrastRule:
    """SFT, plus DPO of each good answer over the same user's answer to another request.

    Trained on a few answers in a few templates, an adapter learns the user's *usual*
    answer more than the answer to *this* request: asked something worded anew, it
    pastes its commonest template ("Here are Adidas electricity bills"). Preferring
    each answer, for its own request, over an answer the user got for a different one
    makes the adapter's choice depend on the request. The negatives are the user's own
    answers (in the batch and the replay history), so it needs no more labels than sft.
    A fresh negative is drawn at every step, from ``rng``.
    """

    weight: float = 1.0  # of the DPO term, next to the sft loss
    beta: float = 0.1
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    name: str = "contrast"
    needs_reference: bool = True

    def select(self, batch: EventBatch, context: RuleContext) -> Selection:
        selection = SFTRule().select(batch, context)
        answers = dict.fromkeys(e.completion for e in (*selection.examples, *context.history))
        examples = [
            replace(e, others=tuple(a for a in answers if a != e.completion))
            for e in selection.examples
        ]
        return Selection(examples, selection.outcomes)

    def rows(self, examples: Sequence[Example]) -> list[tuple[Messages, str]]:
        chosen = [(e.messages, e.completion) for e in examples]
        rejected = [(e.messages, self.rng.choice(e.others)) for e in examples if e.others]
        return chosen + rejected

    def loss(self, examples, policy, reference) -> Tensor:
        n = len(examples)
        sums, counts = policy
        loss = losses.sft_loss(sums[:n], counts[:n])
        paired = [i for i, e in enumerate(examples) if e.others]
        if not paired:  # the user's only answer so far: nothing to contrast it with
            return loss
        ref = reference[0]
        return loss + self.weight * losses.dpo_loss(
            sums[paired], sums[n:], ref[paired], ref[n:], self.beta
        )


def teacher_messages(
    request_messages: Messages, notes: Sequence[str], retrieved: Sequence[Example]
) -> list[dict[str, str]]:
    """The teacher's prompt: the user's principles and relevant history, then the request."""
    lines = []
    if notes:
        lines.append("What this user has told you about themselves (always respect it):")
        lines += [f"- {note.strip()}" for note in notes]
    if retrieved:
        lines.append("Answers this user liked before:")
        for example in retrieved:
            question = example.messages[-1]["content"]
            lines.append(f"Q: {question}\nA: {example.completion}")
    system = {"role": "system", "content": "\n".join(lines)} if lines else None
    rest = [dict(m) for m in request_messages if m.get("role") != "system"]
    return ([system] if system else []) + rest


def retrieve(history: Sequence[Example], query: str, k: int) -> list[Example]:
    """The ``k`` history examples whose requests best match ``query`` (BM25+)."""
    requests = [e.messages[-1]["content"] for e in history]
    return [history[i] for i in BM25Retriever(variant="plus").top_k(query, requests, k)]


@dataclass(frozen=True)
class DistillRule:
    """Context distillation: learn to answer, without context, as the base does with it.

    Off-policy: the targets are the teacher's greedy answers, generated once per update,
    not the student's own samples. Notes are used verbatim as principles; the prompts
    are the batch's requests (or, for a batch of notes only, the user's recent ones).
    """

    name: str = "distill"
    needs_reference: bool = False
    recent_prompts: int = 4

    def select(self, batch: EventBatch, context: RuleContext) -> Selection:
        if context.teacher is None:
            raise ValueError("the distill rule needs a teacher in its RuleContext")
        prompts: list[Messages] = []
        outcomes = {}
        for event in batch.events:
            request = _request(batch, event)
            outcomes[event.id] = TRAINED
            if request is not None and request.messages not in prompts:
                prompts.append(request.messages)
        if not prompts:
            # Only notes arrived: re-answer recent requests under the new principles.
            for example in reversed(context.history):
                if example.messages not in prompts:
                    prompts.append(example.messages)
                if len(prompts) >= self.recent_prompts:
                    break
        if not prompts:
            reason = "skipped: no request to distill on yet (the note is kept as context)"
            return Selection([], {event_id: reason for event_id in outcomes})
        conversations = [
            teacher_messages(
                p, context.notes, retrieve(context.history, p[-1]["content"], context.history_k)
            )
            for p in prompts
        ]
        answers = context.teacher(conversations)
        examples = [
            Example(p, answer) for p, answer in zip(prompts, answers, strict=True) if answer.strip()
        ]
        return Selection(examples, outcomes)

    def rows(self, examples: Sequence[Example]) -> list[tuple[Messages, str]]:
        return [(e.messages, e.completion) for e in examples]

    def loss(self, examples, policy, reference) -> Tensor:
        return losses.sft_loss(*policy)


PRINCIPLES_HEADER = (
    "What this user's past answers show about their habits. Follow a habit only when "
    "the request is of that kind:"
)


def principle_messages(prompt: str, statements: Sequence[str]) -> list[dict[str, str]]:
    """The principles teacher's prompt: the user's principles, then the request."""
    lines = [PRINCIPLES_HEADER, *(f"- {s}" for s in statements)]
    return [{"role": "system", "content": "\n".join(lines)}, {"role": "user", "content": prompt}]


@dataclass(frozen=True)
class PrinciplesRule:
    """SFT on the user's answers, plus distillation of principles on general requests.

    The user's principles (``learning.principles``: their notes, label set and habit
    phrases, derived from all their answers so far) go into a teacher's prompt: the base
    model, adapter disabled. The teacher answers ``general`` requests of many kinds, and
    the adapter learns those answers without the principles in its prompt, next to the
    user's own answers (for the user's own requests, their answer is the best teacher).
    Off-policy: the teacher answers once per update, greedily. The general requests
    teach where a habit carries over and where it has no place, so the adapter does not
    learn "this user's answer" as one template for everything.
    """

    choice_weight: float = 0.0
    general: tuple[str, ...] = GENERAL_PROMPTS
    name: str = "principles"
    needs_reference: bool = False

    def select(self, batch: EventBatch, context: RuleContext) -> Selection:
        if context.teacher is None:
            raise ValueError("the principles rule needs a teacher in its RuleContext")
        sft = SFTRule(choice_weight=self.choice_weight)
        answers = sft._answers(batch)
        if not answers.examples:
            return sft.select(batch, context)
        statements = principles(one_per_event([*context.history, *answers.examples]), context.notes)
        own = sft.select(batch, context).examples
        if not statements:
            return Selection(own, answers.outcomes)
        taught = context.teacher([principle_messages(p, statements) for p in self.general])
        distilled = [
            Example(({"role": "user", "content": p},), answer)
            for p, answer in zip(self.general, taught, strict=True)
            if answer.strip()
        ]
        return Selection(own + distilled, answers.outcomes)

    def rows(self, examples: Sequence[Example]) -> list[tuple[Messages, str]]:
        return SFTRule(choice_weight=self.choice_weight).rows(examples)

    def loss(self, examples, policy, reference) -> Tensor:
        return SFTRule(choice_weight=self.choice_weight).loss(examples, policy, reference)


RULES = ("sft", "dpo", "kto", "distill", "contrast", "principles")


def build_rule(name: str, *, beta: float = 0.1, choice_weight: float = 0.0) -> UpdateRule:
    """The rule called ``name`` (``--method``); ``choice_weight``: sft's decisions."""
    if name == "sft":
        return SFTRule(choice_weight=choice_weight)
    if name == "dpo":
        return DPORule(beta=beta)
    if name == "kto":
        return KTORule(beta=beta)
    if name == "distill":
        return DistillRule()
    if name == "contrast":
        return ContrastRule(beta=beta)
    if name == "principles":
        return PrinciplesRule(choice_weight=choice_weight)
    from adaptkit.errors import InputError

    raise InputError(f"--method {name!r} is not one of {', '.join(RULES)}")
