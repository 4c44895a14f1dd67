"""Click options generated from config dataclasses (litgpt's idea: the signature is the CLI).

A field ``batch_size: int = 4`` with ``metadata={"help": ...}`` becomes
``--batch-size INTEGER  ... [default: 4]``; the dataclass validates the values
and its errors name the flag.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from adaptkit.base_model import DEFAULT_BASE, QUANT_CHOICES
from adaptkit.home import BLOBS_ENV_VAR, DB_ENV_VAR

Config = TypeVar("Config")
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
_CLICK_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def options_from(
    config_class: type,
    defaults: Any = None,
    *,
    prefix: str = "",
    help: Mapping[str, str] | None = None,
    unset: str | None = None,
) -> Decorator:
    """Decorator adding one option per dataclass field of ``config_class``
    (defaulting to ``defaults``' values when given, else the fields' own).
    ``prefix`` goes before every flag and parameter name (``calibrate_`` + ``tokens``:
    ``--calibrate-tokens``), for configs whose bare field names would be unclear.
    ``help`` replaces the help of the fields it names, where one command reads a field
    its own way. ``unset``: every flag defaults to None (read them with ``given``) and
    ``--help`` shows ``unset`` as their default, for a config computed later from
    something the command loads."""
    helps = help or {}

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for field in reversed(dataclasses.fields(config_class)):
            if unset is not None:
                default, show_default = None, unset
            else:
                default = getattr(defaults, field.name) if defaults else field.default
                show_default = True
            kind = field.type if isinstance(field.type, str) else field.type.__name__
            # A bool field is a flag (``--no-auth``), not ``--no-auth true``.
            typed = {"is_flag": True} if kind == "bool" else {"type": _CLICK_TYPES[kind]}
            command = click.option(
                flag_name(prefix + field.name),
                prefix + field.name,
                **typed,
                default=default,
                show_default=show_default,
                help=helps.get(field.name, field.metadata.get("help", "")),
            )(command)
        return command

    return decorate


def build(config_class: type[Config], values: dict[str, Any], *, prefix: str = "") -> Config:
    """Pop the fields of ``config_class`` (named ``prefix`` + field) out of click's
    ``values`` and construct it."""
    names = [field.name for field in dataclasses.fields(config_class)]
    return config_class(**{name: values.pop(prefix + name) for name in names})


def given(config_class: type, values: dict[str, Any], *, prefix: str = "") -> dict[str, Any]:
    """Pop the fields of ``config_class`` out of click's ``values`` (options made with
    ``unset``) and return those the user gave: field name -> value."""
    names = [field.name for field in dataclasses.fields(config_class)]
    popped = {name: values.pop(prefix + name) for name in names}
    return {name: value for name, value in popped.items() if value is not None}


def method_option(choices: Sequence[str], default: str, help: str) -> Decorator:
    """``--method``: how a command's adapter learns (an update rule, or an arena method)."""
    return click.option(
        "--method", type=click.Choice(choices), default=default, show_default=True, help=help
    )


# Options several commands share, so their flags and help read the same everywhere.
def _as_environment(variable: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    # --db / --blobs mean exactly what their environment variables mean, for every part
    # of the command (AdaptKit, the feedback log, trainers it starts): set it here once.
    def remember(_ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value:
            os.environ[variable] = str(value)

    return remember


_home = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="adaptkit home (registry, adapters, model cache) [default: $ADAPTKIT_HOME or ~/.adaptkit]",
)
_db = click.option(
    "--db",
    envvar=DB_ENV_VAR,
    default=None,
    expose_value=False,
    callback=_as_environment(DB_ENV_VAR),
    help="registry database URL shared by processes and machines: sqlite:///PATH or "
    "postgresql+psycopg://USER@HOST:PORT/DB [default: $ADAPTKIT_DB, else HOME/registry.db]",
)
_blobs = click.option(
    "--blobs",
    envvar=BLOBS_ENV_VAR,
    default=None,
    expose_value=False,
    callback=_as_environment(BLOBS_ENV_VAR),
    help="adapter blob store: a directory, or s3://BUCKET/PREFIX shared by machines "
    "[default: $ADAPTKIT_BLOBS, else HOME/adapters]",
)


def registry_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--db`` and ``--blobs``: where the registry lives (the same as setting
    $ADAPTKIT_DB / $ADAPTKIT_BLOBS), for commands with a ``--home`` of their own."""
    return _db(_blobs(command))


def home_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--home`` (passed on as ``home``) and ``registry_options``."""
    return _home(registry_options(command))


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
    help="quantize the base model on load: int8 = PyTorch int8 kernels (fast on a CPU), "
    "nf4 / bnb-int8 = bitsandbytes",
)
