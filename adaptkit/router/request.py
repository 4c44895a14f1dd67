"""What app code asks for: one prompt, for one user, optionally composed with shared adapters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    """One row of a batch.

    ``user``: whose adapter answers (None: no user). ``compose``: shared adapters
    from the library (``adapters/shared/NAME``) to add, name -> weight; their deltas
    are summed with the user's (weighted by ``user_weight``) at run time.
    ``version``: answer with this registry version of the user's adapter instead of
    the active one (an A/B arm, a rollback preview, an evaluation of each version of
    a learning curve in one batch); None follows the active version.
    """

    prompt: str | Sequence[Mapping[str, str]]
    user: str | None = None
    compose: Mapping[str, float] | None = None
    user_weight: float = 1.0
    version: int | None = None
