"""User ids name directories and registry rows, so they are checked strictly."""

from __future__ import annotations

import re

from adaptkit.errors import InvalidUserIdError

# Letters, digits, '_', '-', '.'; starts with a letter or digit; at most 64 chars.
# No path separators, no '..', no control characters, never empty: a user id is used
# as a folder name (fullmatch: '$' alone would let a trailing newline through).
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Names Windows reserves for devices, whatever the extension ("con.txt" too); a blob
# store shared over SMB or copied to such a machine could not hold them.
RESERVED_NAMES = frozenset(
    ["con", "prn", "aux", "nul"] + [f"{port}{n}" for port in ("com", "lpt") for n in range(10)]
)


def validate_user_id(user_id: object, *, source: str = "user id") -> str:
    """Return ``user_id`` if it is a well-formed id, else raise naming the input."""
    if not isinstance(user_id, str):
        raise InvalidUserIdError(
            f"{source} must be a string, got {type(user_id).__name__} {user_id!r}"
        )
    if not USER_ID_PATTERN.fullmatch(user_id) or ".." in user_id:
        raise InvalidUserIdError(
            f"{source} {user_id!r} is not a valid user id: use 1-64 letters, digits, "
            "'_', '-' or '.', starting with a letter or digit (no '/', no '..', no control "
            "characters, not empty)"
        )
    if user_id.split(".")[0].lower() in RESERVED_NAMES or user_id.endswith("."):
        raise InvalidUserIdError(
            f"{source} {user_id!r} is not a valid user id: it is (or ends like) a file name "
            "some systems reserve (CON, PRN, AUX, NUL, COM0-9, LPT0-9, a trailing '.'); "
            "choose another id"
        )
    return user_id


def case_clash(user_id: str, existing: str) -> InvalidUserIdError:
    """The error for a new user id that differs from an existing one only by case (the
    two would share one folder on a case-insensitive file system)."""
    return InvalidUserIdError(
        f"user id {user_id!r} differs from the existing user {existing!r} only by case; "
        f"use {existing!r} (ids that differ only by case would share a folder on "
        "case-insensitive file systems)"
    )
