"""Importers: public per-user benchmarks, from the user's own download, as episode files.

``import_episodes("lamp", questions, out, ImportOptions(golds=outputs))`` writes
``out`` (JSON Lines, atomically, checked with the arena's loader);
``adaptkit arena import FORMAT PATH --out FILE`` on the command line. The formats
and how each becomes history, deployment requests and checks: docs/arena.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adaptkit.arena.importers.common import (
    ImportFormatError,
    ImportOptions,
    Record,
    label_eval,
    write_episodes,
)
from adaptkit.arena.importers.lamp import import_lamp
from adaptkit.arena.importers.peft_u import import_peft_u
from adaptkit.arena.importers.prefeval import import_prefeval
from adaptkit.errors import InputError

IMPORTERS: dict[str, Callable[[Path, ImportOptions], list[Record]]] = {
    "lamp": import_lamp,
    "peft-u": import_peft_u,
    "prefeval": import_prefeval,
}


def import_episodes(fmt: str, path: Path, out: Path, options: ImportOptions) -> dict[str, int]:
    """Convert ``path`` (in format ``fmt``) into the episode file ``out``; returns counts."""
    if fmt not in IMPORTERS:
        raise InputError(f"FORMAT {fmt!r}: choose one of {', '.join(IMPORTERS)}")
    records = IMPORTERS[fmt](Path(path), options)
    write_episodes(records, Path(out))
    splits = [r["split"] for r in records]
    return {
        "users": len({r["user_id"] for r in records}),
        "history": splits.count("history"),
        "deployment": splits.count("deployment"),
    }


__all__ = [
    "IMPORTERS",
    "ImportFormatError",
    "ImportOptions",
    "import_episodes",
    "label_eval",
    "write_episodes",
]
