"""The router's configurable policy."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from adaptkit.errors import InputError


def check_weights(weights: Mapping[str, float], where: str) -> None:
    """Composition weights must be finite numbers; the error names the adapter."""
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise InputError(
                f"{where}: weight of adapter {name!r} must be a number, got {weight!r}"
            )
        if not math.isfinite(weight):
            raise InputError(
                f"{where}: weight of adapter {name!r} is {weight}; use a finite number"
            )


@dataclass(frozen=True)
class RoutingPolicy:
    """How requests become plans.

    cold_start: shared adapter for users that have no adapter yet (None: the base model).
    unknown_users: "error" (default: a user the registry does not know is an error, never
        silently the base) or "cold_start" (treat them like users without an adapter).
    merge_min_new_tokens: fold the adapter into the base weights when one user's batch
        generates at least this many tokens (None: never merge).
    default_compose: shared adapters (name -> weight) added to every user's adapter when
        the request names none.
    """

    cold_start: str | None = None
    unknown_users: Literal["error", "cold_start"] = "error"
    merge_min_new_tokens: int | None = 256
    default_compose: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.unknown_users not in ("error", "cold_start"):
            raise InputError(
                f"unknown_users={self.unknown_users!r}: choose 'error' or 'cold_start'"
            )
        if self.merge_min_new_tokens is not None and self.merge_min_new_tokens < 1:
            raise InputError(
                f"merge_min_new_tokens must be >= 1 or None, got {self.merge_min_new_tokens}"
            )
        check_weights(self.default_compose, "RoutingPolicy.default_compose")
