"""Versioned schema: a registry written by the previous release is refused with the
command that upgrades it, and upgrades with nothing lost; an older revision on either
database is refused the same way; the upgrade is safe to run twice."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from adaptkit.cli.main import main
from adaptkit.feedback import FeedbackLog
from adaptkit.home import Home
from adaptkit.registry import Registry, SchemaVersionError, open_registry, upgrade_registry
from adaptkit.registry.database import make_engine, write_engine
from adaptkit.registry.migrate import alembic_config, head
from adaptkit.registry.schema import FeedbackEventRow, RequestRow
from registry_support import invariant_violations, publish_bytes

PREVIOUS = Path(__file__).parents[1] / "data" / "prev_release_home"


@pytest.fixture
def old_home(tmp_path: Path) -> Home:
    """A copy of the home the previous release wrote (tests/data/make_prev_release_home.py)."""
    return Home(Path(shutil.copytree(PREVIOUS, tmp_path / "home"))).ensure()


def test_previous_release_is_refused_with_the_upgrade_command(old_home: Home) -> None:
    before = (old_home.root / "registry.db").read_bytes()
    with pytest.raises(SchemaVersionError) as caught:
        open_registry(old_home)
    assert f"run `adaptkit db upgrade --home {old_home.root}`" in str(caught.value)
    assert "schema is older (revision 0001" in str(caught.value)
    assert (old_home.root / "registry.db").read_bytes() == before  # nothing was changed
    result = CliRunner().invoke(main, ["users", "--home", str(old_home.root)])
    assert result.exit_code == 2 and "adaptkit db upgrade --home" in result.output


def test_previous_release_upgrades_with_everything_intact(old_home: Home) -> None:
    runner = CliRunner()
    current = runner.invoke(main, ["db", "current", "--home", str(old_home.root)])
    assert "revision 0001" in current.output and "run `adaptkit db upgrade`" in current.output
    result = runner.invoke(main, ["db", "upgrade", "--home", str(old_home.root)])
    assert result.exit_code == 0, result.output
    assert f"schema upgraded: 0001 -> {head()}" in result.output
    again = runner.invoke(main, ["db", "upgrade", "--home", str(old_home.root)])
    assert f"schema already at revision {head()}" in again.output
    assert (
        "up to date" in runner.invoke(main, ["db", "current", "--home", str(old_home.root)]).output
    )

    registry = open_registry(old_home)
    assert [(u.id, u.active_version, u.version_count) for u in registry.users()] == [
        ("alice", 2, 3),
        ("bob", 1, 2),
        ("carol", None, 0),
    ]
    alice = registry.versions("alice")
    assert [(v.number, v.status, v.parent_number) for v in alice] == [
        (1, "retired", None),
        (2, "active", 1),
        (3, "rolled-back", 2),
    ]
    assert alice[2].status_reason == "gate: worse on held-out events"
    assert alice[1].metrics == {"loss_last": 0.5} and alice[1].config == {"epochs": 2}
    assert registry.version("bob", 2).status_reason == "gate pending"
    # The old USER/vN blobs are verified whole: their config digests were recorded.
    for user in ("alice", "bob"):
        for version in registry.versions(user):
            assert version.blob_path.name == f"v{version.number}"
            assert registry.blob_problem(version) is None, version
    assert invariant_violations(registry) == []
    log = FeedbackLog(registry)
    assert [e.kind for e in log.events("alice")] == ["up", "edit", "note"]
    assert [e.text for e in log.events("carol")] == [None, "carol likes ramen."]
    with registry.session() as session:
        assert len(session.scalars(select(RequestRow)).all()) == 3
        assert len(session.scalars(select(FeedbackEventRow)).all()) == 7
    # And it goes on: the next version is content-addressed, numbered after the old ones.
    fourth = publish_bytes(registry, "alice", b"after the upgrade")
    assert fourth.number == 4 and fourth.parent_number == 2
    assert fourth.blob_path.parent.name == "sha256"


def test_an_older_revision_is_refused_then_upgraded_on_either_database(
    db_url: str, tmp_path: Path
) -> None:
    engine = make_engine(db_url)
    from alembic import command

    with write_engine(engine).begin() as connection:
        command.upgrade(alembic_config(connection, None), "0001")
    engine.dispose()
    home = Home(tmp_path / "home").ensure()
    with pytest.raises(SchemaVersionError, match=r"run `adaptkit db upgrade --home .* --db"):
        open_registry(home, db=db_url)
    assert upgrade_registry(home, db=db_url) == ("0001", head())
    registry = open_registry(home, db=db_url)
    assert publish_bytes(registry, "alice", b"x").number == 1
    assert isinstance(registry, Registry)


def test_the_migrations_build_exactly_the_schema_the_code_declares(db_url, tmp_path) -> None:
    """A table or column added to ``schema.py`` without its migration fails here (a fresh
    registry is made by the migrations alone, never by ``create_all``)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from adaptkit.registry.schema import Base

    Registry(db_url, tmp_path / "blobs")
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
