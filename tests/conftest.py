"""Shared fixtures: a tiny random model (unit tier) and the real packaged SmolLM2 (integration)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_model import make_tiny_model_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "users" / "examples"


@pytest.fixture(autouse=True, scope="session")
def scratch_default_home(tmp_path_factory: pytest.TempPathFactory):
    """No test writes into the real default home (~/.adaptkit): what falls back to it
    (the arena's shared model cache, ``share_converted``) gets a scratch one."""
    from adaptkit.home import HOME_ENV_VAR

    previous = os.environ.get(HOME_ENV_VAR)
    os.environ[HOME_ENV_VAR] = str(tmp_path_factory.mktemp("default-home"))
    yield
    if previous is None:
        del os.environ[HOME_ENV_VAR]
    else:
        os.environ[HOME_ENV_VAR] = previous


@pytest.fixture(autouse=True)
def restored_registry_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--db`` / ``--blobs`` set $ADAPTKIT_DB / $ADAPTKIT_BLOBS for the rest of the
    command's process: a CLI test must not hand them to the next test."""
    from adaptkit.home import BLOBS_ENV_VAR, DB_ENV_VAR

    for variable in (DB_ENV_VAR, BLOBS_ENV_VAR):
        monkeypatch.setenv(variable, os.environ.get(variable, ""))
        if not os.environ[variable]:
            monkeypatch.delenv(variable)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh, empty adaptkit home."""
    return tmp_path / "home"


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose model cache holds SmolLM2 converted from the packaged GGUF (once per run).

    Set ADAPTKIT_TEST_MODEL_CACHE to reuse a conversion across runs.
    """
    from adaptkit.base_model import load_base
    from adaptkit.home import Home

    root = os.environ.get("ADAPTKIT_TEST_MODEL_CACHE")
    cache_home = Home(Path(root)) if root else Home(tmp_path_factory.mktemp("smollm2-home"))
    cache_home.ensure()
    load_base("smollm2-135m-instruct", home=cache_home)
    return cache_home.models_dir / "smollm2-135m-instruct"


@pytest.fixture
def smollm2_home(tmp_path: Path, smollm2_cache: Path) -> Path:
    """A fresh home whose model cache already holds the converted SmolLM2 (symlinked)."""
    root = tmp_path / "home"
    (root / "models").mkdir(parents=True)
    (root / "models" / "smollm2-135m-instruct").symlink_to(smollm2_cache, target_is_directory=True)
    return root


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path):
    """The registry's database, once on SQLite (a file) and once on PostgreSQL (a
    database made for this test and dropped after it)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    from registry_support import postgres_database

    with postgres_database() as url:
        yield url
