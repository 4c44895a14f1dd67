"""Registry upkeep: ``adaptkit db upgrade|current``, ``fsck [--repair]``, ``erase USER``,
``gc --keep N``, ``pin USER N``. Each works on the home's registry or the one --db /
--blobs (or $ADAPTKIT_DB / $ADAPTKIT_BLOBS) name."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import click

from adaptkit.cli.options import home_option
from adaptkit.home import Home
from adaptkit.registry import fsck as check_registry
from adaptkit.registry import open_registry, registry_revision, upgrade_registry
from adaptkit.registry.blobs import ORPHAN_GRACE_SECONDS


def _home(home: Path | None) -> Home:
    return Home.resolve(home).ensure()


@click.group()
def db() -> None:
    """The registry database's schema (versioned migrations)."""


@db.command()
@home_option
def upgrade(home: Path | None) -> None:
    """Migrate the registry's schema to the newest revision (safe to run twice)."""
    before, after = upgrade_registry(_home(home))
    if before == after:
        click.echo(f"schema already at revision {after}")
    else:
        click.echo(f"schema upgraded: {before or 'empty'} -> {after}")


@db.command()
@home_option
def current(home: Path | None) -> None:
    """Print the schema revision of the registry and the newest this adaptkit reads."""
    found, newest = registry_revision(_home(home))
    state = "up to date" if found == newest else "run `adaptkit db upgrade`"
    click.echo(f"revision {found or 'none (empty database)'}; newest {newest}: {state}")


@click.command()
@click.option("--repair", is_flag=True, help="remove orphan blobs and stale staging directories")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=ORPHAN_GRACE_SECONDS,
    show_default=True,
    help="seconds an orphan blob must be old before --repair removes it (a younger one "
    "may belong to a publish in flight)",
)
@home_option
def fsck(repair: bool, grace: float, home: Path | None) -> None:
    """Check every version's blob against its row; find orphans and stale staging.
    Exits 1 when something is left wrong."""
    report = check_registry(open_registry(_home(home)), repair=repair, grace_seconds=grace)
    for line in report.lines():
        click.echo(line)
    click.echo("clean" if report.clean else "problems found")
    if not report.clean:
        sys.exit(1)


@click.command()
@click.argument("user")
@click.option(
    "--actor",
    default=None,
    help="who asked for the erasure, recorded in the audit log [default: the OS user]",
)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@home_option
def erase(user: str, actor: str | None, yes: bool, home: Path | None) -> None:
    """Remove everything stored of USER (versions, blobs, feedback, requests), audited."""
    registry = open_registry(_home(home))
    registry.versions(user)  # an unknown user is an error before anything is asked
    if not yes:
        click.confirm(f"erase everything stored of {user!r}?", abort=True)
    report = registry.erase(user, actor=actor or f"cli:{getpass.getuser()}")
    click.echo(
        f"erased {user!r}: {report.versions} versions, {report.blob_dirs} blobs, "
        f"{report.feedback_events} feedback events, {report.requests} requests "
        f"(audit #{report.audit_id}, by {report.actor})"
    )


@click.command()
@click.option(
    "--keep", type=int, required=True, help="versions kept per user, the active one included"
)
@click.option("--user", default=None, help="only this user [default: every user]")
@home_option
def gc(keep: int, user: str | None, home: Path | None) -> None:
    """Delete old versions: keep each user's active version and its ancestors up to
    --keep in all, pinned versions and candidates awaiting their gate."""
    report = open_registry(_home(home)).gc(keep, user_id=user)
    for name, numbers in sorted(report.deleted.items()):
        click.echo(f"{name}: deleted v{', v'.join(map(str, numbers))}")
    click.echo(f"{sum(map(len, report.deleted.values()))} versions deleted")


@click.command()
@click.argument("user")
@click.argument("version", type=int)
@click.option("--unpin", is_flag=True, help="let gc delete it again")
@home_option
def pin(user: str, version: int, unpin: bool, home: Path | None) -> None:
    """Keep VERSION of USER through gc."""
    info = open_registry(_home(home)).pin(user, version, pinned=not unpin)
    click.echo(f"{user} v{info.number} {'pinned' if info.pinned else 'unpinned'}")


COMMANDS = (db, fsck, erase, gc, pin)
