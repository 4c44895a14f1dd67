"""Repetition control's cost in the engine, and the engine's speed with it off vs before it.

    python benchmarks/decode_repetition.py --json OUT.json [--model-cache DIR] [--before REF]
        [--rows 16 --new-tokens 32 --repeats 5 --threads 0]

SmolLM2-135M (fp32): ``--rows`` requests of ``--users`` users (random rank-8 all-linear
adapters), one ``Engine.generate`` call mixing them, every row generating exactly
``--new-tokens`` tokens (so every way does the same work). The ways, each once per
repeat, in rotating order, each on its own copy of the base model:

  before     the engine of git ``REF`` (``adaptkit/bank/engine.py`` as it was there:
             before repetition control existed)
  off        this engine, no control (every row's default ``Repetition()``)
  penalty    repetition_penalty 1.2 on every row
  ngram      no_repeat_ngram_size 3 on every row
  mixed      each row its own: penalty 1.2, n-gram 3, both, frequency + presence 0.5,
             or none, round robin

Reported: each way's median seconds per call, and its per-repeat time over
``before``'s (median of ratios: on a busy machine the ways of one repeat share its load).
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is no package
from bank import BASE, PROMPTS, common_parser, make_adapters, progress, scratch_home  # noqa: E402

from adaptkit.bank import Engine, Repetition  # noqa: E402
from adaptkit.base_model import load_base  # noqa: E402
from adaptkit.router import Request, RoutingPolicy  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent
MIXED = [
    Repetition(repetition_penalty=1.2),
    Repetition(no_repeat_ngram_size=3),
    Repetition(repetition_penalty=1.2, no_repeat_ngram_size=3),
    Repetition(frequency_penalty=0.5, presence_penalty=0.5),
    Repetition(),
]


def engine_at(ref: str) -> type:
    """The ``Engine`` class of ``adaptkit/bank/engine.py`` at git ``ref``."""
    source = subprocess.run(
        ["git", "show", f"{ref}:adaptkit/bank/engine.py"],
        cwd=REPOSITORY,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader("engine_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    exec(compile(source, f"{ref}:adaptkit/bank/engine.py", "exec"), module.__dict__)  # noqa: S102
    return module.Engine


def main() -> None:
    parser = common_parser(__doc__)
    parser.add_argument("--before", default="158d34d", help="git ref of the engine compared")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
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
        for index, path in enumerate(make_adapters(first, root, args.users, rank=8, seed=0)):
            registry.publish(
                f"user{index}", path, method="random", base_model=BASE,
                data_digest="0" * 64, metrics={}, config={},
            )  # fmt: skip
        requests = [
            Request(PROMPTS[i % len(PROMPTS)], user=f"user{i % args.users}")
            for i in range(args.rows)
        ]
        tokens = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
        policy = RoutingPolicy(merge_min_new_tokens=None)
        options = {"shared_dir": root / "shared", "policy": policy}
        before = engine_at(args.before)(first, registry, **options)
        now = Engine(load_base(BASE, home=home), registry, **options)
        mixed = [MIXED[i % len(MIXED)] for i in range(args.rows)]
        ways: dict[str, Callable[[], object]] = {
            "before": lambda: before.generate(requests, **tokens),
            "off": lambda: now.generate(requests, **tokens),
            "penalty": lambda: now.generate(
                requests, **tokens, repetition=Repetition(repetition_penalty=1.2)
            ),
            "ngram": lambda: now.generate(
                requests, **tokens, repetition=Repetition(no_repeat_ngram_size=3)
            ),
            "mixed": lambda: now.generate(requests, **tokens, repetition=mixed),
        }
        if [r.tokens for r in ways["before"]()] != [r.tokens for r in ways["off"]()]:
            raise SystemExit("the engine with control off answers differently from before")
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        for repeat in range(args.repeats):
            names = list(ways)
            names = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in names:
                start = time.perf_counter()
                ways[name]()
                seconds[name].append(time.perf_counter() - start)
                progress(f"repeat {repeat + 1}: {name} {seconds[name][-1]:.2f} s")
        before.close()
        now.close()

    reference = seconds["before"]
    results = {
        "model": BASE,
        "dtype": "float32",
        "before": args.before,
        "users": args.users,
        "rows": args.rows,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "seconds_per_call_p50": {
            name: round(statistics.median(times), 3) for name, times in seconds.items()
        },
        "time_vs_before": {
            name: round(statistics.median(t / r for t, r in zip(times, reference, strict=True)), 3)
            for name, times in seconds.items()
        },
        "seconds": {name: [round(t, 3) for t in times] for name, times in seconds.items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
