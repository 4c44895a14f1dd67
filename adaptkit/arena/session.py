"""One arena run end to end: validate everything, build the pieces, run, write the report.

from adaptkit.arena import ArenaOptions, run_arena
paths = run_arena(ArenaOptions(out=Path("arena-out"), quick=True))
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from adaptkit.arena.backends import (
    ARENA_REPETITION,
    ARENA_TRAIN,
    METHODS,
    KitLearner,
    KitResponder,
    LoraChanges,
    OnlineLearner,
    StepPolicy,
)
from adaptkit.arena.episodes import load_episodes
from adaptkit.arena.metrics import summarize
from adaptkit.arena.report import write_report
from adaptkit.arena.runner import ArenaConfig, ArenaRunner
from adaptkit.bank import Calibration, Repetition
from adaptkit.base_model import DEFAULT_BASE, share_converted
from adaptkit.cpu_memory import keep_freed_memory
from adaptkit.errors import InputError
from adaptkit.home import Home
from adaptkit.kit import AdaptKit
from adaptkit.learning import LoraSpec
from adaptkit.retrieval import RETRIEVERS, build_retriever
from adaptkit.training import TrainConfig

BUNDLED_SUITE = Path(__file__).parent / "data" / "starter_suite.jsonl"
# Suites shipped with the package, runnable by name (``--episodes handwritten``).
# ``handwritten`` is held out: no method or setting is ever chosen on it (docs/arena.md).
BUNDLED_SUITES = {
    "starter": BUNDLED_SUITE,
    "handwritten": Path(__file__).parent / "data" / "handwritten.jsonl",
}
QUICK_USERS = 3
QUICK_CURVE = (2,)


@dataclass(frozen=True)
class ArenaOptions:
    """What ``adaptkit arena run`` takes. Field names are its flags, and its defaults
    theirs: the runner's settings default to ``ArenaConfig``'s."""

    out: Path
    episodes: Path = BUNDLED_SUITE
    conditions: tuple[str, ...] = ArenaConfig.conditions
    users: tuple[str, ...] = ()  # empty: every user with deployment requests
    base: str = DEFAULT_BASE
    quant: str = "none"
    method: str = "sft-kl"
    home: Path | None = None  # default OUT/home: the run owns its registry
    retriever: str = "bm25"
    memory_k: int = ArenaConfig.memory_k
    max_new_tokens: int = ArenaConfig.max_new_tokens
    answer_batch: int = ArenaConfig.answer_batch  # prompts per generation call
    curve_points: tuple[int, ...] | None = None
    quick: bool = False
    # None: the online trainer's shape for the model; LoraChanges: that shape with
    # these fields replaced (the CLI's LoRA flags); a LoraSpec: exactly that one.
    lora: LoraSpec | LoraChanges | None = None
    sft: TrainConfig = ARENA_TRAIN
    # How every condition decodes: calibrated first tokens (adaptkit.bank.calibration).
    calibration: Calibration = field(default_factory=Calibration)
    # How every condition controls repetition (adaptkit.bank.repetition).
    repetition: Repetition = ARENA_REPETITION
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"--method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.retriever not in RETRIEVERS:
            problems.append(f"--retriever {self.retriever!r} is not one of {', '.join(RETRIEVERS)}")
        if self.threads < 0:
            problems.append(f"--threads must be >= 0, got {self.threads}")
        if self.lora is not None and not isinstance(self.lora, LoraSpec):
            problems += _lora_problems(self.lora)
        if problems:
            raise InputError("; ".join(problems))


def _lora_problems(changes: LoraChanges) -> list[str]:
    """What is wrong with LoRA fields given without the model, which the shape needs."""
    names = {f.name for f in fields(LoraSpec)}
    unknown = sorted(set(changes) - names)
    if unknown:
        return [f"lora: {', '.join(unknown)} not fields of LoraSpec ({', '.join(sorted(names))})"]
    try:
        LoraSpec(**changes)  # each field checks alone; --top-layers against the model later
    except InputError as error:
        return [str(error)]
    return []


def suite_path(episodes: Path) -> Path:
    """``episodes`` itself, or the bundled suite it names when no such file exists."""
    if not episodes.exists() and str(episodes) in BUNDLED_SUITES:
        return BUNDLED_SUITES[str(episodes)]
    return episodes


def run_arena(options: ArenaOptions) -> dict[str, Path]:
    """Run the arena and write ``report.json``, ``report.md`` and plots into ``options.out``."""
    keep_freed_memory()  # every training step reuses its large buffers (cpu_memory)
    previous = torch.get_num_threads()
    if options.threads > 0:
        # On a CPU shared with other jobs, torch's OpenMP threads stall on each other at
        # every barrier, and one thread can be several times faster per training step
        # (compare `adaptkit arena run --threads 1` with the default on such a machine).
        torch.set_num_threads(options.threads)
    try:
        return _run(options)
    finally:
        torch.set_num_threads(previous)


def _run(options: ArenaOptions) -> dict[str, Path]:
    started = time.perf_counter()
    config = ArenaConfig(
        conditions=options.conditions,
        memory_k=options.memory_k,
        max_new_tokens=options.max_new_tokens,
        answer_batch=options.answer_batch,
        curve_points=QUICK_CURVE
        if options.quick and options.curve_points is None
        else options.curve_points,
    )
    episodes = suite_path(options.episodes)
    suite = load_episodes(episodes)  # the whole file, before any model work
    users = list(options.users) or suite.users
    if options.quick and not options.users:
        users = users[:QUICK_USERS]
    suite = suite.select(users)

    home = options.home if options.home is not None else options.out / "home"
    if options.home is None:
        # The run's registry is its own; the converted base model is the machine's
        # (the default home's models/), converted once, not into every OUT.
        share_converted(options.base, Home.resolve(home), Home.resolve(None))
    kit = AdaptKit(home, base=options.base, quant=options.quant)
    learner = (
        OnlineLearner(kit)
        if options.method == "online"
        else KitLearner(
            kit,
            method=options.method,
            lora=options.lora,
            config=options.sft,
            policy=StepPolicy.for_budget(options.sft.steps),
        )
    )
    runner = ArenaRunner(
        KitResponder(kit, calibration=options.calibration, repetition=options.repetition),
        learner,
        build_retriever(options.retriever),
        config,
        progress=options.progress,
    )
    try:
        result = runner.run(suite)
    finally:
        if isinstance(learner, OnlineLearner):
            learner.close()
        kit.close()
    result.wall_seconds = time.perf_counter() - started
    summary = summarize(
        result,
        {
            "episodes": str(episodes),
            "model": options.base,
            "quant": options.quant,
            "method": options.method,
            "retriever": options.retriever,
            "memory_k": options.memory_k,
            "max_new_tokens": options.max_new_tokens,
            "answer_batch": options.answer_batch,
            "calibration": asdict(options.calibration),
            "repetition": asdict(options.repetition),
            "quick": options.quick,
            "threads": torch.get_num_threads(),
            "home": str(kit.home.root),
            "lora": asdict(learner.lora_spec()),
            "sft": {
                "max_steps": options.sft.steps,
                "lr": options.sft.lr,
                "batch_size": options.sft.batch_size,
                "word_dropout": options.sft.word_dropout,
                "choice_weight": options.sft.choice_weight,
                "kl_weight": options.sft.kl_weight,
                "anchor_prompts": options.sft.anchor_prompts,
            },
        },
    )
    return write_report(summary, options.out)
