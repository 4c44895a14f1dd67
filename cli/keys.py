"""``adaptkit keys``: the server's bearer API keys (stored hashed; shown once)."""

from __future__ import annotations

from pathlib import Path

import click

from adaptkit.cli.options import home_option
from adaptkit.kit import AdaptKit
from adaptkit.serve import SCOPES, ApiKeys


@click.group()
def keys() -> None:
    """API keys of `adaptkit serve`."""


@keys.command()
@click.option("--scope", type=click.Choice(SCOPES), required=True, help="app or admin")
@click.option(
    "--users",
    default="*",
    show_default=True,
    help="glob of the users an app key reaches (e.g. 'team-*')",
)
@click.option("--name", default="", help="a label to tell keys apart")
@home_option
def create(scope: str, users: str, name: str, home: Path | None) -> None:
    """Make a key and print it (the only time it is shown)."""
    key, info = ApiKeys(AdaptKit(home).registry).create(scope, users=users, name=name)
    click.echo(key)
    click.echo(f"key {info.id}: scope {info.scope}, users {info.users!r}", err=True)


@keys.command(name="list")
@home_option
def list_keys(home: Path | None) -> None:
    """List keys (their first characters only)."""
    for info in ApiKeys(AdaptKit(home).registry).list():
        state = "revoked" if info.revoked else "active"
        click.echo(
            f"{info.id:<4} {info.prefix}...  {info.scope:<5} users {info.users!r:<12} {state}"
            + (f"  {info.name}" if info.name else "")
        )


@keys.command()
@click.argument("key_id", type=int)
@home_option
def revoke(key_id: int, home: Path | None) -> None:
    """Revoke key KEY_ID (see `adaptkit keys list`)."""
    info = ApiKeys(AdaptKit(home).registry).revoke(key_id)
    click.echo(f"key {info.id} revoked")
