"""Continuous batching (rows join and leave a running batch) vs the engine's offline batches.

    python benchmarks/continuous.py --json OUT.json [--model-cache DIR] [--before REF]
        [--users 64 --requests 64 --max-batch 32 --joins 2 --new-tokens 24 --repeats 3]

SmolLM2-135M (fp32), ``--users`` users with random rank-8 all-linear adapters, the same
``--requests`` requests (mostly of different users) answered three ways, each once per
repeat, in rotating order, each on its own copy of the base model:

  offline    ``Engine.generate`` on batches of ``--max-batch`` requests (what a server
             could at best do with every request known up front: the ceiling)
  session    a ``DecodeSession`` kept full: before each step, up to ``--joins`` waiting
             requests join (their prefill), rows that end leave at once, as the server's
             scheduler does under steady load
  before     the same session on the engine of git ``REF`` (``adaptkit/bank/engine.py``
             there), which re-stacked every row's adapters when one joined

Every answer is ``--new-tokens`` long (``min_new_tokens`` offline; a session row ends at
its length), so every way computes the same tokens. Reported: output tokens/s per way
(median over repeats), each way's tokens/s over offline's per repeat (median of ratios:
the ways of one repeat share the machine's load), and how many answers of each session
equal the offline ones.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is no package
from bank import (  # noqa: E402
    BASE,
    PROMPTS,
    common_parser,
    make_adapters,
    progress,
    publish_users,
    scratch_home,
    user_names,
)
from decode_repetition import engine_at  # noqa: E402

from adaptkit.bank import Engine, Sampling  # noqa: E402
from adaptkit.base_model import load_base  # noqa: E402
from adaptkit.router import Request, RoutingPolicy  # noqa: E402


def offline(engine, requests: list[Request], max_batch: int, tokens: int) -> list[list[int]]:
    answers = []
    for start in range(0, len(requests), max_batch):
        batch = requests[start : start + max_batch]
        results = engine.generate(batch, max_new_tokens=tokens, min_new_tokens=tokens)
        answers += [result.tokens for result in results]
    return answers


def continuous(
    engine, requests: list[Request], max_batch: int, joins: int, tokens: int
) -> list[list[int]]:
    """Requests join a running session ``joins`` at a time while it has room."""
    session = engine.session()
    waiting = [(request, Sampling(max_new_tokens=tokens)) for request in requests]
    rows = []
    while waiting or session.rows:
        room = min(joins, max_batch - len(session.rows), len(waiting))
        if room > 0:
            rows += session.admit(waiting[:room])
            del waiting[:room]
        session.step()
    return [row.tokens for row in rows]


def main() -> None:
    parser = common_parser(__doc__)
    parser.add_argument("--before", default="dde39f4", help="git ref of the engine compared")
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--joins", type=int, default=2, help="requests joining per step at most")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="adaptkit-bench-") as scratch:
        root = Path(scratch)
        home, registry = scratch_home(root, args.model_cache)
        first = load_base(BASE, home=home)
        users = user_names(args.users)
        progress(f"publishing {args.users} users' adapters")
        adapters = make_adapters(first, root, args.users, 8, args.seed)
        publish_users(registry, dict(zip(users, adapters, strict=True)))
        requests = [
            Request(PROMPTS[i % len(PROMPTS)], user=users[(i * 7) % len(users)])
            for i in range(args.requests)
        ]
        # Plain batched rows only: the router never merges a batch here.
        options = {
            "shared_dir": root / "shared",
            "policy": RoutingPolicy(merge_min_new_tokens=None),
        }
        before = engine_at(args.before)(first, registry, **options)
        now = Engine(load_base(BASE, home=home), registry, **options)
        offline(now, requests, args.max_batch, 1)  # adapters into each bank's RAM tier
        offline(before, requests, args.max_batch, 1)
        shape = (args.max_batch, args.joins, args.new_tokens)
        ways: dict[str, Callable[[], list[list[int]]]] = {
            "offline": lambda: offline(now, requests, args.max_batch, args.new_tokens),
            "session": lambda: continuous(now, requests, *shape),
            "before": lambda: continuous(before, requests, *shape),
        }
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        answers: dict[str, list[list[int]]] = {}
        for repeat in range(args.repeats):
            names = list(ways)
            names = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in names:
                start = time.perf_counter()
                answers[name] = ways[name]()
                seconds[name].append(time.perf_counter() - start)
                progress(f"repeat {repeat + 1}: {name} {seconds[name][-1]:.2f} s")
        before.close()
        now.close()

    tokens = args.requests * args.new_tokens
    results = {
        "model": BASE,
        "dtype": "float32",
        "adapters": "random rank-8 all-linear, one per user",
        "before": args.before,
        "users": args.users,
        "requests": args.requests,
        "max_batch": args.max_batch,
        "joins_per_step": args.joins,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "output_tokens_per_s_p50": {
            name: round(tokens / statistics.median(times), 2) for name, times in seconds.items()
        },
        "vs_offline_p50": {
            name: round(
                statistics.median(o / t for o, t in zip(seconds["offline"], times, strict=True)),
                3,
            )
            for name, times in seconds.items()
            if name != "offline"
        },
        # Greedy answers of one request in batches of other shapes (padding, rows) can
        # part at a near-tie: float sums in another order.
        "answers_equal_offline": {
            name: sum(a == b for a, b in zip(answers[name], answers["offline"], strict=True))
            for name in ("session", "before")
        },
        "answers": args.requests,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
