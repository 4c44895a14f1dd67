"""User ids name directories and registry rows, so they are checked strictly."""

from __future__ import annotations

import re

from adaptkit.errors import InvalidUserIdError

# Letters, digits, '_', '-', '.'; starts with a letter or digit; at most 64 chars.
# No path separators, no '..', never empty: a user id is used as a folder name.
USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_user_id(user_id: object, *, source: str = "user id") -> str:
    """Return ``user_id`` if it is a well-formed id, else raise naming the input."""
    if not isinstance(user_id, str):
        raise InvalidUserIdError(
            f"{source} must be a string, got {type(user_id).__name__} {user_id!r}"
        )
    if not USER_ID_PATTERN.match(user_id) or ".." in user_id:
        raise InvalidUserIdError(
            f"{source} {user_id!r} is not a valid user id: use 1-64 letters, digits, "
            "'_', '-' or '.', starting with a letter or digit (no '/', no '..', not empty)"
        )
    return user_id
