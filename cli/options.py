"""Click options generated from config dataclasses (litgpt's idea: the signature is the CLI).

A field ``batch_size: int = 4`` with ``metadata={"help": ...}`` becomes
``--batch-size INTEGER  ... [default: 4]``; the dataclass validates the values
and its errors name the flag.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from adaptkit.base_model import DEFAULT_BASE, QUANT_CHOICES

Config = TypeVar("Config")
_CLICK_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def options_from(
    config_class: type, defaults: Any = None, *, prefix: str = ""
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding one option per dataclass field of ``config_class``
    (defaulting to ``defaults``' values when given, else the fields' own).
    ``prefix`` goes before every flag and parameter name (``calibrate_`` + ``tokens``:
    ``--calibrate-tokens``), for configs whose bare field names would be unclear."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for field in reversed(dataclasses.fields(config_class)):
            command = click.option(
                flag_name(prefix + field.name),
                prefix + field.name,
                type=_CLICK_TYPES[
                    field.type if isinstance(field.type, str) else field.type.__name__
                ],
                default=getattr(defaults, field.name) if defaults else field.default,
                show_default=True,
                help=field.metadata.get("help", ""),
            )(command)
        return command

    return decorate


def build(config_class: type[Config], values: dict[str, Any], *, prefix: str = "") -> Config:
    """Pop the fields of ``config_class`` (named ``prefix`` + field) out of click's
    ``values`` and construct it."""
    names = [field.name for field in dataclasses.fields(config_class)]
    return config_class(**{name: values.pop(prefix + name) for name in names})


# Options several commands share, so their flags and help read the same everywhere.
home_option = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="adaptkit home (registry, adapters, model cache) [default: $ADAPTKIT_HOME or ~/.adaptkit]",
)
base_option = click.option(
    "--base",
    default=DEFAULT_BASE,
    show_default=True,
    help="base model: catalogue name, local directory or Hugging Face id",
)
quant_option = click.option(
    "--quant",
    type=click.Choice(QUANT_CHOICES),
    default="none",
    show_default=True,
    help="quantize the base model on load (bitsandbytes)",
)
