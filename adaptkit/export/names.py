"""Immutable adapter names for engines that cache a resolved name forever.

vLLM and Ray Serve keep an adapter loaded under the name it was first resolved by,
so a user's *current* adapter must never travel under the user's bare name: an
update would never reach them. Every exported or resolved adapter is named by its
version, ``alice@v7``; which version is current is adaptkit's answer (the
registry's active version), never the engine's cache.
"""

from __future__ import annotations

import re

from adaptkit.errors import InvalidUserIdError
from adaptkit.user_ids import validate_user_id

_VERSIONED = re.compile(r"^(?P<user>.+)@v(?P<number>[1-9][0-9]{0,8})$")


def versioned_name(user_id: str, number: int) -> str:
    """``alice@v7``: the engine-side name of version 7 of alice's adapter."""
    validate_user_id(user_id)
    if number < 1:
        raise ValueError(f"version numbers start at 1, got {number}")
    return f"{user_id}@v{number}"


def parse_versioned_name(name: str) -> tuple[str, int] | None:
    """``(user, number)`` for a well-formed ``USER@vN``; None for anything else,
    a bare user name included (it would name a moving target)."""
    match = _VERSIONED.match(name)
    if match is None:
        return None
    try:
        user = validate_user_id(match["user"])
    except InvalidUserIdError:
        return None
    return user, int(match["number"])
