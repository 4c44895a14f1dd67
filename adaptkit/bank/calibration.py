"""Calibrated decoding: choose an answer's first tokens by what the request adds.

A user's adapter learns a handful of habits from a handful of examples, and it
learns their frequencies too: a user with three shopping examples and one forum
example starts almost every answer "Here are Adidas ...", even to "Where should I
post my beginner question?". That is the majority-label bias of few-shot
classifiers, and the cure is theirs too: contextual calibration (Zhao et al., 2021,
"Calibrate Before Use"). Ask the same model the same thing with a content-free
request ("N/A") to measure its prior, and prefer the tokens the real request makes
*more* likely than the prior does:

    score(y) = log p(y | request, prefix) - strength * log p(y | "N/A", prefix)

only among plausible tokens, those within a factor ``plausibility`` of the best
one (the adaptive plausibility constraint of contrastive decoding, Li et al.,
2023), so the contrast never picks a token the model itself finds unlikely.

The habit is chosen by the answer's opening ("Here are" vs "On r/" vs "Hola!"),
so only the first ``tokens`` answer tokens are calibrated and the rest is plain
greedy decoding. Calibrating further hurts: once the answer reads "The opposite of
hot is", the content-free row sees that prefix too, and the contrast then prefers
the rarer "cool" to "cold". On the bundled arena suite's probes, 8 calibrated tokens
at plausibility 0.1 keep 0.78 of the base's general answers, the default 3 tokens at
0.3 keep 0.97 (``adaptkit arena run --out OUT --calibrate-tokens 8
--calibrate-plausibility 0.1`` against the defaults; docs/arena.md, "Decoding").
The content-free row runs with the same adapters as its request row. ``Engine``
prefills the content-free prompt once per distinct adapter set in the batch and
steps the twins beside their rows for the calibrated tokens only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from adaptkit.errors import InputError


@dataclass(frozen=True)
class Calibration:
    """Settings of calibrated decoding. Field names are the CLI flags (``--calibrate-tokens``)."""

    tokens: int = field(
        default=3,
        metadata={"help": "first answer tokens chosen by calibrated decoding (0: plain greedy)"},
    )
    strength: float = field(
        default=0.5, metadata={"help": "weight of the content-free prior subtracted"}
    )
    plausibility: float = field(
        default=0.3, metadata={"help": "candidates: tokens with p >= this * the best p"}
    )
    null_request: str = field(
        default="N/A", metadata={"help": "the content-free request that measures the prior"}
    )

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.tokens, int) or self.tokens < 0:
            problems.append(f"--calibrate-tokens must be an integer >= 0, got {self.tokens!r}")
        if not math.isfinite(self.strength) or self.strength < 0:
            problems.append(f"--calibrate-strength must be >= 0, got {self.strength!r}")
        if not 0.0 < self.plausibility <= 1.0:
            problems.append(
                f"--calibrate-plausibility must be in (0, 1], got {self.plausibility!r}"
            )
        if problems:
            raise InputError("; ".join(problems))

    @property
    def active(self) -> bool:
        return self.tokens > 0 and self.strength > 0

    def null_messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.null_request}]


def calibrated_choice(
    request_logits: torch.Tensor, prior_logits: torch.Tensor, calibration: Calibration
) -> torch.Tensor:
    """Each row's token: the plausible one the request raises most above the prior.

    ``request_logits`` and ``prior_logits``: (rows, vocab) next-token logits of the
    request rows and of their content-free twins (same adapters, same answer prefix).
    A token the request rules out (-inf, e.g. a stop token before ``min_new_tokens``)
    is never plausible, whatever the prior says of it.
    """
    request = torch.log_softmax(request_logits.float(), dim=-1)
    prior = torch.log_softmax(prior_logits.float(), dim=-1)
    best = request.max(dim=-1, keepdim=True).values
    plausible = request >= best + math.log(calibration.plausibility)
    calibrated = request - calibration.strength * prior
    return calibrated.masked_fill(~plausible, float("-inf")).argmax(dim=-1)


__all__ = ["Calibration", "calibrated_choice"]
