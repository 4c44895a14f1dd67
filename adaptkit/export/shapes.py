"""The base model's adaptable modules, from its config alone (no weights read)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from adaptkit.bank import ModuleShape, adaptable_shapes
from adaptkit.errors import InputError
from adaptkit.home import Home


def config_shapes(model_dir: Path) -> dict[str, ModuleShape]:
    """Module name -> shape for the model in ``model_dir``, built on the meta device."""
    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return adaptable_shapes(model)


def converted_base_shapes(name: str, home: Home) -> dict[str, ModuleShape]:
    """The shapes of base ``name`` (see ``converted_base_dir``)."""
    return config_shapes(converted_base_dir(name, home))


def converted_base_dir(name: str, home: Home) -> Path:
    """Where base ``name``'s config and tokenizer are: a model directory, or a catalogue
    model already converted into ``home`` (``adaptkit base pull NAME``)."""
    for candidate in (Path(name).expanduser(), home.models_dir / name):
        if (candidate / "config.json").is_file():
            return candidate
    raise InputError(
        f"base model {name!r} is neither a model directory nor converted in {home.root}: "
        f"run `adaptkit base pull {name} --home {home.root}` first"
    )
