"""``adaptkit arena run``: evaluate personalization on an episode file and write the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from adaptkit.arena.backends import METHODS
from adaptkit.arena.conditions import parse_conditions
from adaptkit.arena.importers import IMPORTERS, ImportOptions, import_episodes
from adaptkit.arena.session import BUNDLED_SUITES, ArenaOptions, run_arena
from adaptkit.bank import Calibration, Repetition
from adaptkit.cli.options import (
    base_option,
    build,
    given,
    method_option,
    options_from,
    quant_option,
    registry_options,
)
from adaptkit.errors import InputError
from adaptkit.learning import LoraSpec
from adaptkit.retrieval import RETRIEVERS
from adaptkit.training import TrainConfig

CALIBRATE = "calibrate_"  # Calibration.tokens is --calibrate-tokens


@click.group()
def arena() -> None:
    """AdaptArena evaluation: does each user's model know them?"""


def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected integers like 1,2,4") from None


@arena.command("run")
@click.option(
    "--episodes",
    type=click.Path(dir_okay=False, path_type=Path),
    default=ArenaOptions.episodes,
    show_default="the bundled starter suite",
    help="episode file (JSON Lines or a JSON list; docs/episodes.md), or the name of a "
    f"bundled suite: {', '.join(BUNDLED_SUITES)}",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="directory for report.json, report.md and the plots",
)
@click.option(
    "--conditions",
    default=",".join(ArenaOptions.conditions),
    show_default=True,
    help="comma-separated conditions to compare (base always runs)",
)
@click.option("--users", default=None, help="comma-separated users [default: all; 3 with --quick]")
@base_option
@quant_option
@method_option(
    METHODS,
    ArenaOptions.method,
    "how each user's adapter learns from their history: sft on it; sft-anchor "
    "(plus replay of the base model's own answers to unrelated requests); sft-kl (plus "
    "the online trainer's KL to the base on general prompts: keeps general ability); "
    "contrast-kl (sft-kl plus DPO of each answer over the user's answer to another request); "
    "principles-kl (sft-kl plus a teacher's answers to general requests, the teacher "
    "prompted with the user's habits derived from their history); "
    "online (the history streamed in order into the online trainer; needs a fresh --home)",
)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="adaptkit home for the run's registry and adapters [default: OUT/home, its "
    "converted base model linked from $ADAPTKIT_HOME or ~/.adaptkit]",
)
@registry_options
@click.option(
    "--retriever",
    type=click.Choice(RETRIEVERS),
    default=ArenaOptions.retriever,
    show_default=True,
    help="memory retrieval: BM25, or MiniLM embeddings (packaged model)",
)
@click.option(
    "--memory-k",
    default=ArenaOptions.memory_k,
    show_default=True,
    help="history records in the prompt",
)
@click.option("--max-new-tokens", default=ArenaOptions.max_new_tokens, show_default=True)
@click.option(
    "--answer-batch",
    default=ArenaOptions.answer_batch,
    show_default=True,
    help="prompts per generation call (users and adapter versions mixed in one batch)",
)
@click.option(
    "--curve-points",
    default=None,
    help="history sizes k for the learning curve [default: 1,2,4,...; 2 with --quick]",
)
@click.option("--quick", is_flag=True, help="3 users, one curve point: a few minutes")
@click.option(
    "--threads",
    default=ArenaOptions.threads,
    show_default=True,
    help="torch CPU threads (0: torch's default); 1 is faster on a busy shared CPU",
)
# The adapter's shape depends on the model's layer count, known once it is loaded: a
# LoRA flag replaces that field of the shape computed then (KitLearner.lora_spec).
@options_from(LoraSpec, unset="the online trainer's shape for the model")
@options_from(Calibration, prefix=CALIBRATE)
@options_from(Repetition, defaults=ArenaOptions.repetition)
@options_from(
    TrainConfig,
    defaults=ArenaOptions.sft,
    help={"steps": "most optimizer steps per adapter (fewer for small curve points)"},
)
def run(conditions: str, users: str | None, curve_points: str | None, **values: Any) -> None:
    """Compare conditions on EPISODES and write the report into OUT."""
    options = ArenaOptions(
        conditions=tuple(c.name for c in parse_conditions(conditions)),
        users=tuple(u.strip() for u in (users or "").split(",") if u.strip()),
        curve_points=_ints(curve_points, "--curve-points"),
        lora=given(LoraSpec, values) or None,
        calibration=build(Calibration, values, prefix=CALIBRATE),
        repetition=build(Repetition, values),
        sft=build(TrainConfig, values),
        **values,  # the flags named as ArenaOptions' fields: --out, --base, --memory-k ...
    )
    paths = run_arena(options)
    click.echo(f"report: {paths['markdown']}")
    for name in ("json", "curve", "conditions"):
        click.echo(f"        {paths[name]}")


@arena.command("import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(IMPORTERS))
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="episode file to write (JSON Lines; replaced atomically)",
)
@options_from(ImportOptions)
def import_(fmt: str, path: Path, out: Path, **values: Any) -> None:
    """Convert a public per-user benchmark file at PATH into an episode file
    (formats: docs/arena.md, 'Importing public benchmarks')."""
    counts = import_episodes(fmt, path, out, build(ImportOptions, values))
    click.echo(
        f"wrote {out}: {counts['users']} users, {counts['history']} history records, "
        f"{counts['deployment']} deployment requests"
    )
