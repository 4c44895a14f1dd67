"""Export to engine-loadable PEFT directories, on the tiny model: every adapter shape the
bank serves comes out in vLLM's narrow config subset with the same function (PEFT's
logits on the export equal the engine's on the stored version), and what cannot be
exported is refused before anything is written."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from bank_support import make_lora_dir, publish_dir
from click.testing import CliRunner
from peft import PeftModel
from safetensors.torch import load_file

from adaptkit.bank import Engine, adaptable_shapes
from adaptkit.base_model import load_base
from adaptkit.cli.main import main as cli
from adaptkit.errors import BlobIntegrityError, InputError
from adaptkit.export import (
    PROVENANCE,
    ExportError,
    config_shapes,
    export_version,
    parse_versioned_name,
    versioned_name,
)
from adaptkit.home import Home
from adaptkit.registry import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Registry

SERVED = "org/tiny-base"
PROMPT_IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64]])

# Every path of the adapter math the bank implements, and the two PEFT features older
# vLLM releases drop without a word (layers_to_transform, rank/alpha patterns).
SHAPES = {
    "alice": {"rank": 4, "targets": "all-linear"},
    "bob": {"rank": 8, "targets": ["q_proj", "v_proj"], "alpha": 4.0},
    "carol": {"rank": 2, "targets": ["gate_proj", "down_proj", "o_proj"], "use_rslora": True},
    "dave": {"rank": 4, "targets": ["gate_proj", "up_proj"], "layers_to_transform": [1]},
    "erin": {
        "rank": 4,
        "targets": ["q_proj", "v_proj", "down_proj"],
        "rank_pattern": {"down_proj": 2},
        "alpha_pattern": {"v_proj": 3.0},
    },
}


@dataclass
class World:
    model_dir: Path
    home: Home
    registry: Registry

    def base(self):
        return load_base(str(self.model_dir), home=self.home)


@pytest.fixture(scope="module")
def world(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("export-world")
    home = Home(root / "home").ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    base = load_base(str(tiny_model_dir), home=home)
    for seed, (user, shape) in enumerate(SHAPES.items()):
        source = make_lora_dir(base.model, root / "src" / user, seed=seed + 1, **shape)
        publish_dir(registry, user, source, str(tiny_model_dir))
    return World(tiny_model_dir, home, registry)


def shapes(world: World):
    return config_shapes(world.model_dir)


@torch.inference_mode()
def engine_logits(world: World, user: str) -> torch.Tensor:
    """The engine's logits for PROMPT_IDS with ``user``'s active version."""
    base = world.base()
    with Engine(base, world.registry, shared_dir=world.home.root / "shared") as engine:
        adapter = engine.bank.load_user(world.registry.active_version(user))
        engine.set_rows([[(adapter, 1.0)]])
        return base.model(PROMPT_IDS).logits


@torch.inference_mode()
def peft_logits(world: World, adapter_dir: Path) -> torch.Tensor:
    model = PeftModel.from_pretrained(world.base().model, str(adapter_dir))
    return model(PROMPT_IDS).logits


def test_names_are_versioned_and_a_bare_user_name_is_never_one() -> None:
    assert versioned_name("alice", 7) == "alice@v7"
    assert parse_versioned_name("alice@v7") == ("alice", 7)
    assert parse_versioned_name("a.b-c_d@v12") == ("a.b-c_d", 12)
    for name in ("alice", "alice@7", "alice@v0", "alice@v", "@v3", "../x@v1", "alice@v1x"):
        assert parse_versioned_name(name) is None, name


def test_the_module_shapes_from_the_config_are_the_loaded_models(world: World) -> None:
    assert shapes(world) == adaptable_shapes(world.base().model)


@pytest.mark.parametrize("user", list(SHAPES))
def test_export_is_the_same_function_in_vllms_config_subset(
    world: World, user: str, tmp_path: Path
) -> None:
    version = world.registry.active_version(user)
    out = tmp_path / "export"
    exported = export_version(
        world.registry, version, out, served_base=SERVED, shapes=shapes(world)
    )

    config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == SERVED
    assert config["bias"] == "none" and not config["use_dora"] and not config["use_rslora"]
    assert not config["modules_to_save"]
    for dropped in ("layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern"):
        assert not config.get(dropped), dropped
    assert exported.name == f"{user}@v1" and exported.rank == config["r"]

    expected = engine_logits(world, user)
    assert not torch.allclose(expected, engine_logits_of_base(world)), "adapter has no effect"
    torch.testing.assert_close(peft_logits(world, out), expected, rtol=1e-5, atol=1e-5)
    # The stored version itself, through PEFT: the export changed nothing it computes.
    torch.testing.assert_close(
        peft_logits(world, out), peft_logits(world, version.blob_path), rtol=1e-5, atol=1e-5
    )


@torch.inference_mode()
def engine_logits_of_base(world: World) -> torch.Tensor:
    return world.base().model(PROMPT_IDS).logits


def test_top_layer_adapter_has_weights_only_where_it_adapts(world: World, tmp_path: Path) -> None:
    exported = export_version(
        world.registry,
        world.registry.active_version("dave"),
        tmp_path / "dave",
        served_base=SERVED,
        shapes=shapes(world),
    )
    tensors = load_file(str(exported.path / ADAPTER_WEIGHTS))
    layers = {int(key.split(".layers.")[1].split(".")[0]) for key in tensors}
    assert layers == {1}
    assert exported.changes == ()  # one rank, one scale: tensors copied as they are


def test_mixed_ranks_and_scales_are_padded_and_folded(world: World, tmp_path: Path) -> None:
    exported = export_version(
        world.registry,
        world.registry.active_version("erin"),
        tmp_path / "erin",
        served_base=SERVED,
        shapes=shapes(world),
    )
    assert exported.rank == 4
    assert any("padded" in change for change in exported.changes)
    assert any("folded" in change for change in exported.changes)


def test_exporting_again_to_the_same_directory_is_a_no_op(world: World, tmp_path: Path) -> None:
    version = world.registry.active_version("alice")
    first = export_version(
        world.registry, version, tmp_path / "a", served_base=SERVED, shapes=shapes(world)
    )
    stamp = (first.path / ADAPTER_WEIGHTS).stat().st_mtime_ns
    again = export_version(
        world.registry, version, tmp_path / "a", served_base=SERVED, shapes=shapes(world)
    )
    assert again == first
    assert (again.path / ADAPTER_WEIGHTS).stat().st_mtime_ns == stamp


def test_an_existing_other_directory_is_refused_untouched(world: World, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_version(
            world.registry,
            world.registry.active_version("alice"),
            out,
            served_base=SERVED,
            shapes=shapes(world),
        )
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_changed_blob_is_refused_and_nothing_is_written(
    world: World, tmp_path: Path, tiny_model_dir: Path
) -> None:
    base = world.base()
    source = make_lora_dir(base.model, tmp_path / "src", seed=40, rank=2)
    version = publish_dir(world.registry, "tampered", source, str(tiny_model_dir))
    weights = version.blob_path / ADAPTER_WEIGHTS
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(BlobIntegrityError):
        export_version(
            world.registry, version, tmp_path / "out", served_base=SERVED, shapes=shapes(world)
        )
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_features_outside_the_subset_are_refused_with_the_reason(
    world: World, tmp_path: Path, tiny_model_dir: Path
) -> None:
    source = make_lora_dir(world.base().model, tmp_path / "src", seed=41, rank=2)
    config = json.loads((source / ADAPTER_CONFIG).read_text())
    config["use_dora"] = True
    (source / ADAPTER_CONFIG).write_text(json.dumps(config))
    version = publish_dir(world.registry, "dora", source, str(tiny_model_dir))
    with pytest.raises(InputError, match="use_dora"):
        export_version(
            world.registry, version, tmp_path / "out", served_base=SERVED, shapes=shapes(world)
        )
    assert not (tmp_path / "out").exists()


def test_tensors_for_modules_the_base_lacks_are_refused(
    world: World, tmp_path: Path, tiny_model_dir: Path
) -> None:
    source = make_lora_dir(world.base().model, tmp_path / "src", seed=42, rank=2)
    other = {name: shape for name, shape in shapes(world).items() if "layers.1." not in name}
    version = publish_dir(world.registry, "elsewhere", source, str(tiny_model_dir))
    with pytest.raises(InputError, match="no adaptable linear layer"):
        export_version(world.registry, version, tmp_path / "out", served_base=SERVED, shapes=other)


def test_cli_exports_the_active_or_a_named_version(world: World, tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--base", str(world.model_dir), "--home", str(world.home.root)]
    result = runner.invoke(
        cli, ["export", "bob", "--to", str(tmp_path / "b"), "--served-base", SERVED, *common]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["name"] == "bob@v1"
    assert json.loads((tmp_path / "b" / PROVENANCE).read_text())["number"] == 1

    result = runner.invoke(cli, ["export", "bob@v1", "--to", str(tmp_path / "b1"), *common])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b1" / ADAPTER_CONFIG).read_text())[
        "base_model_name_or_path"
    ] == str(world.model_dir)

    result = runner.invoke(cli, ["export", "bob@9", "--to", str(tmp_path / "b9"), *common])
    assert result.exit_code == 2 and "no version 9" in result.output
    result = runner.invoke(cli, ["export", "bob@x", "--to", str(tmp_path / "bx"), *common])
    assert result.exit_code == 2 and "USER" in result.output
    assert not (tmp_path / "b9").exists() and not (tmp_path / "bx").exists()


def test_cli_refuses_a_base_that_is_not_there(world: World, tmp_path: Path) -> None:
    missing = tmp_path / "no-model"
    result = CliRunner().invoke(
        cli,
        ["export", "bob", "--to", str(tmp_path / "o"), "--base", str(missing)]
        + ["--home", str(world.home.root)],
    )
    assert result.exit_code == 2 and "adaptkit base pull" in result.output
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
