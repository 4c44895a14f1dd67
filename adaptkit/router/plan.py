"""A request's plan: which adapters answer it, with which weights, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from adaptkit.registry import VersionInfo

PlanKind = Literal["base", "adapter", "merged", "composed", "cold_start"]


@dataclass(frozen=True)
class PlannedAdapter:
    source: Literal["user", "shared"]
    name: str  # the user id, or the shared adapter's folder name
    weight: float = 1.0
    version: int | None = None  # registry version number (user adapters)
    sha256: str | None = None  # registry blob digest (user adapters)
    # The registry row the plan was made from, so the bank loads exactly that version.
    version_info: VersionInfo | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        what = f"{self.name} v{self.version}" if self.source == "user" else f"shared {self.name}"
        return what if self.weight == 1.0 else f"{what} x{self.weight:g}"


@dataclass(frozen=True)
class Plan:
    """Returned with every result and logged: the request's route through the bank."""

    kind: PlanKind
    user: str | None
    adapters: tuple[PlannedAdapter, ...]
    reason: str
    base: str = "fp32"  # the base's kernels (BaseModel.backend), set by the router

    def describe(self) -> str:
        adapters = " + ".join(a.describe() for a in self.adapters) or "no adapter"
        return f"{self.kind}: {adapters} ({self.reason}) on base {self.base}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "user": self.user,
            "adapters": [
                {
                    "source": a.source,
                    "name": a.name,
                    "weight": a.weight,
                    "version": a.version,
                    "sha256": a.sha256,
                }
                for a in self.adapters
            ],
            "reason": self.reason,
            "base": self.base,
        }
