"""Scratch homes share the machine's converted base model instead of converting their own."""

from __future__ import annotations

import shutil
from pathlib import Path

from adaptkit.base_model import load_base, share_converted
from adaptkit.home import Home

NAME = "smollm2-135m-instruct"  # a catalogue name; the tiny model stands in for its cache


def _converted(shared: Home, tiny_model_dir: Path) -> Path:
    cache = shared.models_dir / NAME
    shutil.copytree(tiny_model_dir, cache)
    return cache


def test_a_scratch_home_links_the_shared_cache_and_loads_from_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    shared = Home(tmp_path / "machine")
    cache = _converted(shared, tiny_model_dir)
    scratch = Home(tmp_path / "run" / "home")
    assert share_converted(NAME, scratch, shared) == cache
    link = scratch.models_dir / NAME
    assert link.is_symlink() and link.resolve() == cache.resolve()
    base = load_base(NAME, home=scratch)
    assert base.source == f"converted cache {link}"
    assert base.model.config.num_hidden_layers == 2  # the tiny model, not a conversion
    # linked once: a second call leaves the link alone
    assert share_converted(NAME, scratch, shared) is None and link.is_symlink()


def test_nothing_is_linked_where_the_home_has_its_own_or_the_name_is_no_catalogue_model(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    shared = Home(tmp_path / "machine")
    _converted(shared, tiny_model_dir)
    own = Home(tmp_path / "own")
    mine = _converted(own, tiny_model_dir)
    assert share_converted(NAME, own, shared) is None
    assert not mine.is_symlink()
    assert share_converted(NAME, shared, shared) is None
    scratch = Home(tmp_path / "scratch")
    assert share_converted(str(tiny_model_dir), scratch, shared) is None
    assert share_converted("gpt-17", scratch, shared) is None
    assert not scratch.models_dir.exists()


def test_nothing_is_linked_where_the_shared_home_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "machine"
    blocker.write_text("a file where the shared home would be")
    scratch = Home(tmp_path / "scratch")
    assert share_converted(NAME, scratch, Home(blocker)) is None
    assert not (scratch.models_dir / NAME).exists()
