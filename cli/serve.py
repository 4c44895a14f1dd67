"""``adaptkit serve``: the OpenAI-compatible server that learns while it serves.

adaptkit keys create --scope app            # prints a key once
adaptkit serve --port 8000                  # http://127.0.0.1:8000/v1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from adaptkit.bank import DEFAULT_CACHE_BYTES
from adaptkit.cli.options import base_option, build, home_option, options_from, quant_option
from adaptkit.kit import AdaptKit
from adaptkit.router import RoutingPolicy
from adaptkit.serve import ServeConfig, Server, run


@click.command()
@options_from(ServeConfig)
@click.option(
    "--cold-start",
    default=None,
    help="answer users without an adapter with 'base' or this shared adapter (the response "
    "says so) [default: such users are a 404]",
)
@click.option(
    "--cache-mb",
    type=click.IntRange(min=1),
    default=DEFAULT_CACHE_BYTES >> 20,
    show_default=True,
    help="the bank's RAM tier of parsed adapters, in MiB (~10 MiB per rank-8 all-linear "
    "SmolLM2-135M adapter): size it to the users active at once, or their adapters are "
    "read from disk again on the decoding thread",
)
@base_option
@quant_option
@home_option
def serve(
    cold_start: str | None,
    cache_mb: int,
    base: str,
    quant: str,
    home: Path | None,
    **values: Any,
) -> None:
    """Serve every user's model over OpenAI's API, and learn from their feedback."""
    config = build(ServeConfig, values)  # validates every flag before the model loads
    policy = None
    if cold_start is not None:
        shared = None if cold_start == "base" else cold_start
        policy = RoutingPolicy(cold_start=shared, unknown_users="cold_start")
    # --db / --blobs (home_option) reach the kit through $ADAPTKIT_DB / $ADAPTKIT_BLOBS.
    kit = AdaptKit(home, base=base, quant=quant, policy=policy, cache_bytes=cache_mb << 20)
    with kit, Server(kit, config) as server:
        run(server)
