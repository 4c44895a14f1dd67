"""The arena's answering phase replayed at several batch sizes, over a finished run's adapters.

    python benchmarks/arena_batches.py --run OUT --json RESULT.json [--batches 48,96,192,384]

``OUT`` is the directory of a finished ``adaptkit arena run`` (its ``report.json`` and
its home with every adapter version it published). The runner queues the same
prompts as that run -- a learner hands back the run's versions in the order they
were published, instead of training -- and answers them in batches of each size
(``--answer-batch``). Per size: seconds, batches, prompt tokens (real, and as padded
to each batch's longest), and whether every answer equals the run's own. This is
what chose ``runner.ANSWER_BATCH``; a PEFT comparison of the same workload is
``benchmarks/arena_answering.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from adaptkit.arena.backends import KitResponder, Learned
from adaptkit.arena.episodes import HistoryRecord, load_episodes
from adaptkit.arena.report import run_path
from adaptkit.arena.runner import ArenaConfig, ArenaRunner
from adaptkit.bank import Calibration
from adaptkit.cpu_memory import keep_freed_memory
from adaptkit.kit import AdaptKit
from adaptkit.learning import LoraSpec
from adaptkit.retrieval import build_retriever
from adaptkit.router import Request


class PublishedVersions:
    """A ``Learner`` that trains nothing: the n-th call for a user returns the n-th
    version the run published for them (the runner learns each user's points in order)."""

    def __init__(self, kit: AdaptKit, run: dict) -> None:
        self.kit = kit
        self.method = run["method"]
        self.lora = LoraSpec(**run["lora"])
        self.calls: dict[str, int] = {}

    def lora_spec(self) -> LoraSpec:
        return self.lora

    def learn(self, user: str, history: Sequence[HistoryRecord]) -> Learned:
        index = self.calls.get(user, 0)
        self.calls[user] = index + 1
        version = self.kit.registry.versions(user)[index]
        return Learned(user, version.number, 0.0, 0, len(history))


class CountingResponder:
    """The run's responder, counting the prompt tokens each batch prefills."""

    def __init__(self, inner: KitResponder) -> None:
        self.inner = inner
        self.real = 0
        self.padded = 0
        self.batches = 0

    def prompt_tokens(self, prompt: list[dict[str, str]]) -> int:
        return self.inner.prompt_tokens(prompt)

    def answer(self, requests: Sequence[Request], *, max_new_tokens: int) -> list[str]:
        lengths = [self.prompt_tokens(list(r.prompt)) for r in requests]
        self.real += sum(lengths)
        self.padded += max(lengths) * len(lengths)
        self.batches += 1
        return self.inner.answer(requests, max_new_tokens=max_new_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished arena run's OUT")
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--batches", default="48,96,192,384", help="comma-separated sizes")
    args = parser.parse_args()
    sizes = [int(size) for size in args.batches.split(",")]
    report = json.loads((args.run / "report.json").read_text())
    run = report["run"]
    expected = [
        (a["condition"], str(a["task_id"]), a["adapter_user"], a["k"], a["answer"])
        for a in report["answers"]
    ]

    keep_freed_memory()
    # The report records its paths relative to OUT or the package (report.portable_path).
    home = run_path(run["home"], args.run)
    kit = AdaptKit(home, base=run["model"], quant=run["quant"])
    suite = load_episodes(run_path(run["episodes"], args.run)).select(run["users"])
    results = {}
    for size in sizes:
        responder = CountingResponder(
            KitResponder(kit, calibration=Calibration(**run["calibration"]))
        )
        config = ArenaConfig(
            memory_k=run["memory_k"], max_new_tokens=run["max_new_tokens"], answer_batch=size
        )
        runner = ArenaRunner(
            responder,
            PublishedVersions(kit, run),
            build_retriever(run["retriever"]),
            config,
            progress=False,
        )
        started = time.perf_counter()
        result = runner.run(suite)
        seconds = time.perf_counter() - started
        answers = [
            (a.condition, str(a.task_id), a.adapter_user, a.k, a.text) for a in result.answers
        ]
        results[size] = {
            "seconds": round(seconds, 1),
            "rows": len(answers),
            "batches": responder.batches,
            "prompt_tokens_real": responder.real,
            "prompt_tokens_padded": responder.padded,
            "answers_equal_the_run": answers == expected,
        }
        print(size, results[size], flush=True)
    output = {
        "run": str(args.run),
        "wall_seconds_of_the_run": run["wall_seconds"],
        "answer_batch_of_the_run": run["answer_batch"],
        "by_batch": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(output, indent=2))


if __name__ == "__main__":
    main()
