"""Evaluation of a candidate adapter: general-ability probes and the promotion gate."""

from adaptkit.gate.gate import Gate, GateConfig, GateResult, heldout_loss
from adaptkit.gate.probes import DEFAULT_PROBES, Probe, ProbeSuite, probes_from_answers

__all__ = [
    "DEFAULT_PROBES",
    "Gate",
    "GateConfig",
    "GateResult",
    "Probe",
    "ProbeSuite",
    "heldout_loss",
    "probes_from_answers",
]
