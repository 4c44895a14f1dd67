"""Model names of the server: ``<base>`` (the base model), ``<base>:<user>`` (the user's
active version) and ``<base>:<user>@<N>`` (version N pinned), as Ray Serve LLM and
SGLang name adapters. A response names the exact version that answered."""

from __future__ import annotations

import re
from dataclasses import dataclass

from adaptkit.errors import InputError
from adaptkit.router import Plan
from adaptkit.user_ids import validate_user_id

_VERSION = re.compile(r"^[1-9][0-9]{0,8}$")


class UnknownModelError(InputError):
    """The model name names another base model than the one served."""


@dataclass(frozen=True)
class ModelRef:
    base: str
    user: str | None = None
    version: int | None = None


def parse_model(name: str, served: str) -> ModelRef:
    """``name`` as a reference to the served base ``served``; errors say what to send."""
    base, colon, rest = name.rpartition(":") if ":" in name else (name, "", "")
    if base != served:
        raise UnknownModelError(
            f"model {name!r}: this server serves {served!r}; send model {served!r} (the base "
            f"model), '{served}:<user>' or '{served}:<user>@<version>' (GET /v1/models lists them)"
        )
    if not colon:
        return ModelRef(base)
    user, at, number = rest.partition("@")
    validate_user_id(user)
    if at and not _VERSION.match(number):
        raise InputError(
            f"model {name!r}: the version after '@' must be a positive number, like "
            f"'{served}:{user}@3', got {number!r}"
        )
    return ModelRef(base, user, int(number) if at else None)


def answered_by(served: str, plan: Plan) -> str:
    """The exact model that answered: ``<base>:<user>@<N>``, or the base name (a cold
    start or a base request; the response's plan says why)."""
    mine = [a for a in plan.adapters if a.source == "user"]
    if plan.user is None or not mine:
        return served
    return f"{served}:{plan.user}@{mine[0].version}"
