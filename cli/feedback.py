"""``adaptkit feedback USER ...``: record one feedback event, optionally learn from it now.

    adaptkit feedback alice --prompt "How do I get to work?" --response "Drive." \\
        --edit "Cycle along the river: 15 minutes."
    adaptkit feedback alice --request 3 --up
    adaptkit feedback alice --note "I always cycle" --learn --method distill
"""

from __future__ import annotations

from pathlib import Path

import click

from adaptkit.base_model import DEFAULT_BASE, load_base
from adaptkit.cli.options import home_option, method_option, quant_option
from adaptkit.errors import InputError
from adaptkit.feedback import FeedbackEvent, FeedbackLog
from adaptkit.kit import AdaptKit
from adaptkit.learning import RULES
from adaptkit.online import OnlineConfig, OnlineTrainer


@click.command()
@click.argument("user")
@click.option(
    "--request",
    "request_id",
    type=int,
    default=None,
    help="id of the recorded request this feedback is about",
)
@click.option("--prompt", default=None, help="record the request now: what the user asked")
@click.option("--response", default=None, help="... and what the assistant answered")
@click.option("--accept", is_flag=True, help="the user went on with the answer (implicit)")
@click.option("--up", is_flag=True, help="thumbs up")
@click.option("--down", is_flag=True, help="thumbs down")
@click.option("--edit", default=None, help="the user's corrected answer")
@click.option("--chosen", default=None, help="preferred of two answers (with --rejected)")
@click.option("--rejected", default=None, help="the other answer (with --chosen)")
@click.option("--note", default=None, help='a stated preference or principle: "I always cycle"')
@click.option(
    "--learn", is_flag=True, help="run the online update for USER now and print the gate's verdict"
)
@method_option(RULES, OnlineConfig.method, "update rule used by --learn")
@click.option(
    "--steps",
    type=int,
    default=OnlineConfig.steps,
    show_default=True,
    help="optimizer steps used by --learn",
)
@click.option("--base", default=DEFAULT_BASE, show_default=True, help="base model (--learn)")
@quant_option
@home_option
def feedback(
    user: str,
    request_id: int | None,
    prompt: str | None,
    response: str | None,
    accept: bool,
    up: bool,
    down: bool,
    edit: str | None,
    chosen: str | None,
    rejected: str | None,
    note: str | None,
    learn: bool,
    method: str,
    steps: int,
    base: str,
    quant: str,
    home: Path | None,
) -> None:
    """Record USER's feedback durably (committed before this prints), then optionally learn."""
    kinds = [
        name
        for name, given in (
            ("accept", accept),
            ("up", up),
            ("down", down),
            ("edit", edit is not None),
            ("pair", chosen is not None or rejected is not None),
            ("note", note is not None),
        )
        if given
    ]
    if len(kinds) > 1:
        raise InputError(f"give one kind of feedback per call, got {', '.join(kinds)}")
    if not kinds and not learn:
        raise InputError(
            "give one of --accept --up --down --edit --chosen/--rejected --note "
            "(or --learn to process pending feedback)"
        )
    if (prompt is None) != (response is None):
        raise InputError("--prompt and --response come together (they record the request)")
    if prompt is not None and request_id is not None:
        raise InputError("give either --request ID or --prompt/--response, not both")
    config = OnlineConfig(method=method, steps=steps)  # validate flags before any write
    kit = AdaptKit(home, base=base, quant=quant)
    log = FeedbackLog(kit.registry)
    if kinds:
        if prompt is not None:
            request_id = log.record_completion(user, prompt, response).id
        event = log.record(
            FeedbackEvent(
                user,
                kinds[0],
                request_id,
                text=edit if edit is not None else note,
                chosen=chosen,
                rejected=rejected,
            )
        )
        where = f", request {event.request_id}" if event.request_id else ""
        click.echo(f"recorded {user} event {event.id} ({event.kind}{where}): pending")
    if learn:
        base = load_base(kit.base_name, home=kit.home, quant=kit.quant)  # the trainer's own copy
        trainer = OnlineTrainer(kit.registry, base, base_name=kit.base_name, config=config)
        while (result := trainer.update(user)) is not None:
            if result.version is None:
                click.echo(f"no new version: {result.error or 'nothing this rule learns from'}")
            else:
                v = result.version
                click.echo(f"{user} v{v.number} ({v.status}, {v.method}): {v.status_reason}")
            for event_id, outcome in sorted(result.outcomes.items()):
                click.echo(f"  event {event_id}: {outcome}")
