"""The promotion gate: a candidate serves only if it helps the user and keeps general ability.

Two checks, both recorded on the version (``metrics`` and ``status_reason``):

1. the user's held-back interactions (feedback events never trained on): the
   candidate's token-mean loss on the answers the user wanted must not exceed the
   current version's by more than ``user_tolerance`` nats;
2. probe retention (``probes.ProbeSuite.retention``) >= ``min_retention``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from adaptkit.errors import InputError
from adaptkit.gate.probes import ProbeSuite
from adaptkit.learning import AdapterSlot, Example, encode_rows, losses


@dataclass(frozen=True)
class GateConfig:
    min_retention: float = 0.95
    user_tolerance: float = 0.05  # nats per token: evaluation noise on a handful of answers

    def __post_init__(self) -> None:
        if not 0 <= self.min_retention <= 1:
            raise InputError(f"min_retention must be in [0, 1], got {self.min_retention}")
        if math.isnan(self.user_tolerance) or self.user_tolerance < 0:  # inf: no user check
            raise InputError(f"user_tolerance must be >= 0, got {self.user_tolerance}")


@dataclass(frozen=True)
class GateResult:
    passed: bool
    retention: float
    user_loss: float | None  # the candidate's, on held-back interactions (None: none yet)
    reference_user_loss: float | None  # the current version's (or the base's)
    reason: str

    def with_note(self, note: str) -> GateResult:
        return replace(self, reason=f"{self.reason}; {note}")

    def metrics(self) -> dict[str, float | bool | None]:
        return {
            "gate_passed": self.passed,
            "retention": self.retention,
            "heldout_loss": self.user_loss,
            "heldout_loss_before": self.reference_user_loss,
        }


@torch.no_grad()
def heldout_loss(slot: AdapterSlot, examples: Sequence[Example], max_length: int) -> float | None:
    """Token-mean loss of the slot's adapter on the held-back answers."""
    if not examples:
        return None
    encoded = encode_rows(
        slot.base.tokenizer, [(e.messages, e.completion) for e in examples], max_length
    )
    return float(losses.sft_loss(*slot.scored(encoded).sequence_logps()))


class Gate:
    def __init__(self, probes: ProbeSuite, config: GateConfig | None = None) -> None:
        self.probes = probes
        self.config = config or GateConfig()

    def check(
        self,
        slot: AdapterSlot,
        heldout: Sequence[Example],
        reference_loss: float | None,
        max_length: int,
    ) -> GateResult:
        """Judge the slot's current weights against the reference's held-out loss."""
        retention = self.probes.retention(slot)
        user_loss = heldout_loss(slot, heldout, max_length)
        return self.decide(retention, user_loss, reference_loss)

    def decide(
        self, retention: float, user_loss: float | None, reference_loss: float | None
    ) -> GateResult:
        failures, notes = [], []
        floor = self.config.min_retention
        if retention < floor:
            failures.append(f"probe retention {retention:.2f} < {floor:.2f}")
        else:
            notes.append(f"probe retention {retention:.2f} >= {floor:.2f}")
        if user_loss is None or reference_loss is None:
            notes.append("no held-back interactions yet")
        elif not math.isfinite(user_loss) or (
            user_loss > reference_loss + self.config.user_tolerance
        ):
            failures.append(
                f"held-back loss {user_loss:.3f} > {reference_loss:.3f} before "
                f"(+{self.config.user_tolerance} allowed)"
            )
        else:
            notes.append(f"held-back loss {user_loss:.3f} vs {reference_loss:.3f} before")
        if failures:
            reason = "held back: " + "; ".join(failures + notes)
        else:
            reason = "promoted: " + "; ".join(notes)
        return GateResult(not failures, retention, user_loss, reference_loss, reason)
