"""A version is its weights *and* its config: both are checked against the digests the
registry recorded before either is parsed. An edited ``lora_alpha`` or ``use_rslora``
once changed a user's model silently, and a malformed config gave a raw traceback that
failed a whole ``errors="return"`` batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bank_support import make_lora_dir, publish_dir

from adaptkit.base_model import load_base
from adaptkit.errors import BlobIntegrityError
from adaptkit.home import Home
from adaptkit.registry import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Registry
from adaptkit.router import Request
from registry_support import publish_bytes


def test_an_edited_config_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "adapters")
    version = publish_bytes(registry, "alice", b"weights")
    config = version.blob_path / ADAPTER_CONFIG
    original = config.read_bytes()
    config.write_text(json.dumps({"r": 8, "lora_alpha": 1600}))
    with pytest.raises(BlobIntegrityError, match=r"alice' v1: .*adapter_config.json does not"):
        registry.read_weights(version)
    assert "adapter_config.json" in registry.blob_problem(version)
    config.write_text("{not json")  # malformed: still the integrity error, never a parse error
    with pytest.raises(BlobIntegrityError, match="does not match its recorded sha256"):
        registry.read_config(version)
    config.write_bytes(original)
    assert registry.blob_problem(version) is None
    (version.blob_path / ADAPTER_WEIGHTS).unlink()
    assert "missing" in registry.blob_problem(version)


@pytest.mark.parametrize(
    "edit",
    [
        {"lora_alpha": 1600.0},
        {"use_rslora": True},
        "{not json",
        [1, 2],
    ],
)
def test_the_engine_refuses_a_tampered_config_for_that_row_only(
    edit, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from adaptkit.bank import Engine

    home = Home(tmp_path / "home").ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    base = load_base(str(tiny_model_dir), home=home)
    for seed, user in enumerate(("alice", "bob"), start=1):
        adapter = make_lora_dir(base.model, tmp_path / "src" / user, seed=seed, rank=4)
        publish_dir(registry, user, adapter, str(tiny_model_dir))
    config = registry.active_version("alice").blob_path / ADAPTER_CONFIG
    if isinstance(edit, dict):
        text = json.dumps({**json.loads(config.read_text()), **edit})
    else:
        text = edit if isinstance(edit, str) else json.dumps(edit)
    config.write_text(text)
    with Engine(base, registry, shared_dir=home.root / "shared") as engine:
        results = engine.generate(
            [Request("Hi", user="alice"), Request("Hi", user="bob")],
            max_new_tokens=2,
            errors="return",
        )
    assert isinstance(results[0].error, BlobIntegrityError), results[0]
    assert "adapter_config.json does not match its recorded sha256" in str(results[0].error)
    assert results[1].ok and results[1].tokens
