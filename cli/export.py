"""``adaptkit export``: a stored adapter version as a PEFT directory for vLLM, LoRAX, SGLang."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import click

from adaptkit.base_model import CATALOGUE
from adaptkit.cli.options import base_option, home_option
from adaptkit.errors import InputError
from adaptkit.export import converted_base_shapes, export_version
from adaptkit.home import Home
from adaptkit.registry import open_registry
from adaptkit.user_ids import validate_user_id

_TARGET = re.compile(r"^(?P<user>[^@]+)(@v?(?P<number>[0-9]+))?$")


def parse_target(target: str) -> tuple[str, int | None]:
    """``alice`` (the active version), ``alice@7`` or ``alice@v7`` -> (user, number)."""
    match = _TARGET.match(target)
    if match is None:
        raise InputError(f"USER[@N] {target!r}: write a user id, optionally @ and a version number")
    user = validate_user_id(match["user"], source="USER")
    return user, int(match["number"]) if match["number"] else None


@click.command()
@click.argument("target", metavar="USER[@N]")
@click.option(
    "--to",
    "out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="the directory to create (must not exist)",
)
@click.option(
    "--served-base",
    default=None,
    help="the base model's name on the engine (vLLM's --model); default: its hub id",
)
@base_option
@home_option
def export(target: str, out: Path, served_base: str | None, base: str, home: Path | None) -> None:
    """Write USER's active version (or version N) as a PEFT adapter directory that vLLM,
    LoRAX and SGLang load as it is, named USER@vN on the engine."""
    user, number = parse_target(target)
    resolved = Home.resolve(home)
    registry = open_registry(resolved)
    if number is None:
        version = registry.active_version(user)
        if version is None:
            raise InputError(f"user {user!r} has no active version; name one: {user}@N")
    else:
        version = registry.version(user, number)
    entry = CATALOGUE.get(base)
    served = served_base or (entry.hf_id if entry else base)
    exported = export_version(
        registry, version, out, served_base=served, shapes=converted_base_shapes(base, resolved)
    )
    record = asdict(exported) | {"path": str(exported.path)}
    click.echo(json.dumps(record, indent=2))
