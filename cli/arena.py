"""``adaptkit arena run``: evaluate personalization on an episode file and write the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from adaptkit.arena.backends import ARENA_LORA, ARENA_WORD_DROPOUT, METHODS
from adaptkit.arena.conditions import CONDITIONS, parse_conditions
from adaptkit.arena.retrieval import RETRIEVERS
from adaptkit.arena.runner import ANSWER_BATCH
from adaptkit.arena.session import BUNDLED_SUITE, ArenaOptions, run_arena
from adaptkit.bank import Calibration
from adaptkit.base_model import DEFAULT_BASE, QUANT_CHOICES
from adaptkit.cli.options import build, options_from
from adaptkit.errors import InputError
from adaptkit.training import LoraSpec, SFTConfig

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
    default=BUNDLED_SUITE,
    show_default="the bundled starter suite",
    help="episode file (JSON Lines or a JSON list; docs/episodes.md)",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="directory for report.json, report.md and the plots",
)
@click.option(
    "--conditions",
    default=",".join(CONDITIONS),
    show_default=True,
    help="comma-separated conditions to compare (base always runs)",
)
@click.option("--users", default=None, help="comma-separated users [default: all; 3 with --quick]")
@click.option(
    "--base",
    "model",
    default=DEFAULT_BASE,
    show_default=True,
    help="base model: catalogue name, local directory or Hugging Face id",
)
@click.option("--quant", type=click.Choice(QUANT_CHOICES), default="none", show_default=True)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="sft-kl",
    show_default=True,
    help="how each user's adapter learns from their history: sft on it; sft-anchor "
    "(plus replay of the base model's own answers to unrelated requests); sft-kl (plus "
    "the online trainer's KL to the base on general prompts: keeps general ability); "
    "contrast-kl (sft-kl plus DPO of each answer over the user's answer to another request); "
    "online (the history streamed in order into the online trainer; needs a fresh --home)",
)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="adaptkit home for the run's registry and adapters [default: OUT/home, its "
    "converted base model linked from $ADAPTKIT_HOME or ~/.adaptkit]",
)
@click.option(
    "--retriever",
    type=click.Choice(RETRIEVERS),
    default="bm25",
    show_default=True,
    help="memory retrieval: BM25, or MiniLM embeddings (packaged model)",
)
@click.option("--memory-k", default=3, show_default=True, help="history records in the prompt")
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option(
    "--answer-batch",
    default=ANSWER_BATCH,
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
    default=0,
    show_default=True,
    help="torch CPU threads (0: torch's default); 1 is faster on a busy shared CPU",
)
@options_from(LoraSpec, defaults=ARENA_LORA)
@options_from(Calibration, prefix=CALIBRATE)
@click.option(
    "--steps",
    default=24,
    show_default=True,
    help="most optimizer steps per adapter (fewer for small curve points)",
)
@click.option("--lr", default=4e-3, show_default=True, help="AdamW learning rate")
@click.option("--batch-size", default=4, show_default=True, help="examples per step")
@click.option("--seed", default=0, show_default=True, help="training seed")
@click.option(
    "--word-dropout",
    default=ARENA_WORD_DROPOUT,
    show_default=True,
    help="drop each history request word with this probability at every training step "
    "(words the answer repeats are kept): the adapter then follows reworded requests",
)
def run(
    episodes: Path,
    out: Path,
    conditions: str,
    users: str | None,
    model: str,
    quant: str,
    method: str,
    home: Path | None,
    retriever: str,
    memory_k: int,
    max_new_tokens: int,
    answer_batch: int,
    curve_points: str | None,
    quick: bool,
    threads: int,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    word_dropout: float,
    **values: Any,
) -> None:
    """Compare conditions on EPISODES and write the report into OUT."""
    options = ArenaOptions(
        out=out,
        episodes=episodes,
        conditions=tuple(c.name for c in parse_conditions(conditions)),
        users=tuple(u.strip() for u in (users or "").split(",") if u.strip()),
        base=model,
        quant=quant,
        method=method,
        home=home,
        retriever=retriever,
        memory_k=memory_k,
        max_new_tokens=max_new_tokens,
        answer_batch=answer_batch,
        curve_points=_ints(curve_points, "--curve-points"),
        quick=quick,
        threads=threads,
        lora=build(LoraSpec, values),
        calibration=build(Calibration, values, prefix=CALIBRATE),
        sft=SFTConfig(
            steps=steps, lr=lr, batch_size=batch_size, seed=seed, word_dropout=word_dropout
        ),
    )
    paths = run_arena(options)
    click.echo(f"report: {paths['markdown']}")
    for name in ("json", "curve", "conditions"):
        click.echo(f"        {paths[name]}")
