"""``adaptkit`` commands. Each is a few lines over the Python API in ``adaptkit``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from adaptkit.base_model import DEFAULT_BASE
from adaptkit.cli.arena import arena
from adaptkit.cli.export import export
from adaptkit.cli.feedback import feedback
from adaptkit.cli.keys import keys
from adaptkit.cli.options import (
    base_option,
    build,
    home_option,
    method_option,
    options_from,
    quant_option,
)
from adaptkit.cli.registry import COMMANDS as REGISTRY_COMMANDS
from adaptkit.cli.serve import serve
from adaptkit.cpu_memory import keep_freed_memory
from adaptkit.errors import AdaptkitError
from adaptkit.kit import AdaptKit
from adaptkit.learning import RULES, LoraSpec
from adaptkit.training import TrainConfig


class _ErrorsAsMessages(click.Group):
    """Print adaptkit's own errors as one clear message and exit with their code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AdaptkitError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(error.exit_code)


@click.group(cls=_ErrorsAsMessages)
@click.version_option(package_name="adaptkit")
def main() -> None:
    """Per-user LoRA adapters over one shared small base model."""
    keep_freed_memory()  # training steps reuse their large buffers (adaptkit.cpu_memory)


@main.group()
def base() -> None:
    """The shared base model."""


def _describe_base(kit: AdaptKit) -> dict[str, Any]:
    loaded = kit.base
    config = loaded.model.config
    return {
        "name": loaded.name,
        "source": loaded.source,
        "path": str(loaded.path) if loaded.path else None,
        "quant": loaded.quant,
        "backend": loaded.backend,
        "architecture": type(loaded.model).__name__,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "footprint_mb": round(loaded.footprint_bytes / 1e6, 1),
    }


def _base_command(name: str, help: str) -> click.Command:
    """``base pull`` and ``base info`` do the same: loading NAME finds it and converts it
    into the home's cache when it is not there yet, then they describe it."""

    @base.command(name, help=help)
    @click.argument("name", default=DEFAULT_BASE)
    @quant_option
    @home_option
    def command(name: str, quant: str, home: Path | None) -> None:
        kit = AdaptKit(home, base=name, quant=quant)
        click.echo(json.dumps(_describe_base(kit), indent=2))

    return command


base_pull = _base_command(
    "pull", "Find NAME, convert it once into the home's cache, and check it loads."
)
base_info = _base_command(
    "info", "Show where NAME loads from, its size and its footprint under --quant."
)


@main.command()
@click.option("--user", required=True, help="the user whose adapter to train")
@click.option(
    "--log",
    "log_path",
    required=True,
    type=click.Path(path_type=Path),
    help="interaction log (JSON Lines; format in the README)",
)
@options_from(LoraSpec)
@options_from(TrainConfig)
@method_option(RULES, "sft", "update rule (docs/online.md, 'Update rules')")
@click.option(
    "--activate/--no-activate",
    default=True,
    show_default=True,
    help="make the new version the one that serves the user",
)
@base_option
@quant_option
@home_option
def train(
    user: str,
    log_path: Path,
    method: str,
    activate: bool,
    base: str,
    quant: str,
    home: Path | None,
    **values: Any,
) -> None:
    """Train USER's adapter from a log and publish it as a new version."""
    lora, config = build(LoraSpec, values), build(TrainConfig, values)
    kit = AdaptKit(home, base=base, quant=quant)
    version = kit.train(user, log_path, lora=lora, config=config, activate=activate, method=method)
    metrics = version.metrics
    click.echo(
        f"published {user} v{version.number} ({version.status}): "
        f"{int(metrics['examples'])} examples, {int(metrics['steps'])} steps, "
        f"loss {metrics['loss_first']:.3f} -> {metrics['loss_last']:.3f}, "
        f"{metrics['train_seconds']:.1f}s\nblob {version.blob_path} sha256 {version.blob_sha256}"
    )


@main.command()
@home_option
def users(home: Path | None) -> None:
    """List users and their active version."""
    rows = AdaptKit(home).registry.users()
    if not rows:
        click.echo("no users yet: train one with `adaptkit train --user NAME --log FILE`")
    for row in rows:
        active = f"v{row.active_version}" if row.active_version else "-"
        click.echo(f"{row.id:<24} active {active:<6} versions {row.version_count}")


@main.command()
@click.argument("user")
@home_option
def versions(user: str, home: Path | None) -> None:
    """List USER's adapter versions, newest last."""
    for v in AdaptKit(home).registry.versions(user):
        parent = f"v{v.parent_number}" if v.parent_number else "-"
        loss = v.metrics.get("loss_last")
        click.echo(
            f"v{v.number:<4} {v.status:<9} parent {parent:<5} {v.method:<6} "
            f"{v.created_at:%Y-%m-%d %H:%M:%S}  data {v.data_digest[:12]}  "
            f"sha256 {v.blob_sha256[:12]}"
            + (f"  loss {loss:.3f}" if loss is not None else "")
            + (f"  ({v.status_reason})" if v.status_reason else "")
        )


@main.command()
@click.argument("user")
@click.argument("version", type=int)
@home_option
def activate(user: str, version: int, home: Path | None) -> None:
    """Make VERSION of USER the serving one (rollback = activate an older version)."""
    info = AdaptKit(home).registry.activate(user, version)
    click.echo(f"{user}: v{info.number} is active")


@main.command()
@click.argument("prompt")
@click.option("--user", default=None, help="answer with this user's active adapter")
@click.option("--max-new-tokens", default=64, show_default=True, type=int)
@base_option
@quant_option
@home_option
def chat(
    prompt: str, user: str | None, max_new_tokens: int, base: str, quant: str, home: Path | None
) -> None:
    """Answer PROMPT with USER's adapter, or with the base model when --user is absent."""
    kit = AdaptKit(home, base=base, quant=quant)
    if user is not None:
        kit.adapter_for(user)  # fail on an unknown user before loading the model
    click.echo(kit.chat(prompt, user=user, max_new_tokens=max_new_tokens))


main.add_command(arena)
main.add_command(export)
main.add_command(feedback)
for _command in REGISTRY_COMMANDS:
    main.add_command(_command)
main.add_command(serve)
main.add_command(keys)

if __name__ == "__main__":
    main()
