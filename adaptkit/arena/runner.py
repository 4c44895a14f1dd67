"""The arena run: every condition on every user's deployment requests, the online
learning curve, probes for retention, cross-user answers for leakage.

Order of work (one shared base model throughout):

1. per user, the history streamed in timeline order: after the first k records
   (k = 1, 2, 4, ... while k <= n/2, then n) the learner publishes a version of the
   user's adapter, and the deployment requests are queued for that version (the
   learning curve; k = 0 is ``base``). After all n records the final version also
   gets ``adapter+memory``, the probes, and the previous user's requests (leakage).
   ``adapter`` answers are made whenever any adapter condition runs: they are the
   curve's last point.
2. every queued prompt, plus the prompt-only conditions (``base``, ``oracle``,
   ``memory``) and the probes on the base model, answered in large batches that mix
   users and versions (each row pins its version), sorted by length so that
   padding is small.

Everything is validated (episodes, users, conditions) before the model loads.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from adaptkit.arena.backends import Learned, Learner, Messages, Responder
from adaptkit.arena.conditions import CONDITIONS, Condition, build_prompt
from adaptkit.arena.episodes import EpisodeSuite, HistoryRecord, Task
from adaptkit.arena.evaluators import Judge, excluded_hits, score
from adaptkit.errors import InputError
from adaptkit.retrieval import Retriever
from adaptkit.router import Request

# Prompts per generation call. Wide batches that mix users and versions keep each
# matmul large; ``length_batches`` keeps their padding small. Replaying the answering
# of a full run's adapters (714 rows, SmolLM2-135M, 2-core CPU) at several sizes gives
# the same answers in 221 s at 48, 181 s at 96, 153 s at 192 and 172 s at 384
# (``python benchmarks/arena_batches.py --run OUT --json R.json``;
# benchmarks/results/arena_batches.json, explained in benchmarks/results/README.md).
ANSWER_BATCH = 192


# A batch ends before a prompt longer than this times the batch's first (shortest)
# one: left padding is prefilled like real tokens, so one batch of 40-token requests
# and 150-token memory prompts would prefill nearly four times its real tokens.
MAX_LENGTH_SPREAD = 1.5


def length_batches(
    order: Sequence[int], tokens: Sequence[int], size: int, spread: float = MAX_LENGTH_SPREAD
) -> list[list[int]]:
    """Consecutive runs of ``order`` of at most ``size`` rows, each row's length in
    [first, ``spread`` * first] of its batch's first row.

    ``order`` is sorted by length within groups (base rows, then adapter rows), so
    a row shorter than its batch's first one is the next group's first: it starts
    a batch. Without that cut, a batch of 192 can hold the base model's 50 longest
    memory prompts (170 tokens) and 142 adapter requests of 13-15 tokens, all padded
    to 170: four times the real tokens prefilled.
    """
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if (
            current
            and len(current) < size
            and tokens[current[0]] <= tokens[index] <= spread * tokens[current[0]]
        ):
            current.append(index)
        else:
            batches.append([index])
    return batches


@dataclass(frozen=True)
class ArenaConfig:
    conditions: tuple[str, ...] = tuple(CONDITIONS)
    memory_k: int = 3  # history records retrieved into the memory prompt
    max_new_tokens: int = 32
    curve_points: tuple[int, ...] | None = None  # None: 0, 1, 2, 4, ..., n
    answer_batch: int = ANSWER_BATCH
    leakage: bool = True

    def __post_init__(self) -> None:
        problems = []
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            problems.append(f"--conditions: unknown {', '.join(unknown)}")
        if self.memory_k < 1:
            problems.append(f"--memory-k must be >= 1, got {self.memory_k}")
        if self.answer_batch < 1:
            problems.append(f"--answer-batch must be >= 1, got {self.answer_batch}")
        if self.max_new_tokens < 1:
            problems.append(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.curve_points is not None and any(k < 0 for k in self.curve_points):
            problems.append(f"--curve-points must be >= 0, got {self.curve_points}")
        if problems:
            raise InputError("; ".join(problems))


@dataclass(frozen=True)
class Answer:
    """One generated answer and its score."""

    condition: str  # a condition name, "probe:<condition>", "curve" or "leakage"
    task_id: int | str
    task_user: str | None  # whose request it is (None for probes)
    adapter_user: str | None  # whose adapter answered (None = base model)
    k: int | None  # history records learned from (adapter answers)
    text: str
    passed: bool
    prompt_tokens: int
    checks: dict[str, bool]
    excluded: tuple[str, ...]  # must_exclude values found in the answer


@dataclass
class ArenaResult:
    suite: EpisodeSuite
    config: ArenaConfig
    users: list[str]
    answers: list[Answer] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    learned: dict[str, list[tuple[int, Learned]]] = field(default_factory=dict)
    curve_points: list[int] = field(default_factory=list)
    leakage_pairs: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0


def curve_points(n: int, requested: Sequence[int] | None) -> list[int]:
    """0, 1, 2, 4, ... doubling while k <= n / 2, then n (the final adapter).

    Stopping the doubling at n / 2 spares a point (8 of 9, say) that costs a whole
    training run and tells little beside the final one.
    """
    if requested is None:
        points, k = [0], 1
        while 2 * k <= n:
            points.append(k)
            k *= 2
    else:
        points = [k for k in requested if k < n]
    return sorted(set(points) | {0, n}) if n > 0 else [0]


@dataclass(frozen=True)
class _Pending:
    """A prompt queued for answering, with what to record about its answer."""

    condition: str
    task: Task
    request: Request  # prompt, and whose adapter version answers it (user None: base)
    k: int | None


class ArenaRunner:
    def __init__(
        self,
        responder: Responder,
        learner: Learner | None,
        retriever: Retriever,
        config: ArenaConfig,
        *,
        judge: Judge | None = None,
        progress: bool = True,
    ) -> None:
        self.responder = responder
        self.learner = learner
        self.retriever = retriever
        self.config = config
        self.judge = judge
        self.progress = progress

    def _answer_all(self, pending: list[_Pending], result: ArenaResult) -> None:
        """Answer every queued prompt, in batches of similar length, and score it."""
        tokens = [self.responder.prompt_tokens(list(p.request.prompt)) for p in pending]
        # Base rows first (no adapter arithmetic at all), then adapter rows; by length
        # within each, so a batch is padded to little more than its own prompts.
        order = sorted(
            range(len(pending)), key=lambda i: (pending[i].request.user is not None, tokens[i])
        )
        answers: list[Answer | None] = [None] * len(pending)
        batches = length_batches(order, tokens, self.config.answer_batch)
        for picked in tqdm(batches, desc="answering", unit="batch", disable=not self.progress):
            texts = self.responder.answer(
                [pending[i].request for i in picked], max_new_tokens=self.config.max_new_tokens
            )
            for index, text in zip(picked, texts, strict=True):
                item = pending[index]
                outcome = score(text, item.task.eval, intent=item.task.intent, judge=self.judge)
                answers[index] = Answer(
                    item.condition,
                    item.task.task_id,
                    item.task.user_id,
                    item.request.user,
                    item.k,
                    text,
                    outcome.passed,
                    tokens[index],
                    outcome.checks,
                    tuple(excluded_hits(text, item.task.eval)),
                )
        # Recorded in the order they were queued, whatever the batching was.
        result.answers.extend(a for a in answers if a is not None)

    def _prompt(self, condition: Condition, task: Task, history: Sequence[HistoryRecord]):
        return build_prompt(condition, task, history, self.retriever, self.config.memory_k)

    def run(self, suite: EpisodeSuite) -> ArenaResult:
        started = time.perf_counter()
        wanted = [CONDITIONS[name] for name in CONDITIONS if name in self.config.conditions]
        # base is always run: it is k = 0 of the curve and the reference of retention/leakage.
        if CONDITIONS["base"] not in wanted:
            wanted.insert(0, CONDITIONS["base"])
        adapter_conditions = [c for c in wanted if c.uses_adapter]
        if adapter_conditions and self.learner is None:
            raise InputError("adapter conditions need a learner; drop them from --conditions")
        users = suite.users
        result = ArenaResult(suite, self.config, users)

        tasks: dict[str, list[Task]] = {}
        for user in users:
            tasks[user] = []
            for task in suite.deployment[user]:
                if task.eval.skip_reason:
                    result.skipped.append(
                        {
                            "task_id": str(task.task_id),
                            "user": user,
                            "reason": task.eval.skip_reason,
                        }
                    )
                else:
                    tasks[user].append(task)
        probes = [t for t in suite.probes if not t.eval.skip_reason]
        for task in suite.probes:
            if task.eval.skip_reason:
                result.skipped.append(
                    {"task_id": str(task.task_id), "user": "", "reason": task.eval.skip_reason}
                )

        pending: list[_Pending] = []
        for condition in (c for c in wanted if not c.uses_adapter):
            for user in users:
                history = suite.history.get(user, ())
                for task in tasks[user]:
                    prompt = self._prompt(condition, task, history)
                    pending.append(_Pending(condition.name, task, Request(prompt), None))
        if adapter_conditions:
            for task in probes:
                pending.append(_Pending("probe:base", task, Request(_plain(task)), None))
            pending += self._adapters(suite, users, tasks, probes, wanted, result)
        self._answer_all(pending, result)
        result.wall_seconds = time.perf_counter() - started
        return result

    def _adapters(
        self,
        suite: EpisodeSuite,
        users: list[str],
        tasks: dict[str, list[Task]],
        probes: list[Task],
        wanted: list[Condition],
        result: ArenaResult,
    ) -> list[_Pending]:
        """Train every user's curve of versions; return the prompts each version answers."""
        trainable = [u for u in users if suite.history.get(u) and tasks[u]]
        for user in users:
            if user not in trainable:
                result.skipped.append(
                    {
                        "task_id": "*",
                        "user": user,
                        "reason": "no history records: adapter conditions not run for this user",
                    }
                )
        longest = max((len(suite.history[u]) for u in trainable), default=0)
        result.curve_points = curve_points(longest, self.config.curve_points)
        pending: list[_Pending] = []
        bar = tqdm(trainable, desc="users (learn)", unit="user", disable=not self.progress)
        for index, user in enumerate(bar):
            history = suite.history[user]
            points = [k for k in curve_points(len(history), self.config.curve_points) if k > 0]
            for k in points:
                bar.set_postfix(user=user, k=k)
                learned = self.learner.learn(user, history[:k])
                result.learned.setdefault(user, []).append((k, learned))
                final = k == len(history)
                asks = [("adapter" if final else "curve", t, _plain(t)) for t in tasks[user]]
                if final:
                    if CONDITIONS["adapter+memory"] in wanted:
                        memory = CONDITIONS["adapter+memory"]
                        asks += [
                            (memory.name, t, self._prompt(memory, t, history)) for t in tasks[user]
                        ]
                    asks += [("probe:adapter", t, _plain(t)) for t in probes]
                    victim = trainable[index - 1] if len(trainable) > 1 else None
                    if self.config.leakage and victim is not None:
                        asks += [("leakage", t, _plain(t)) for t in tasks[victim]]
                for condition, task, prompt in asks:
                    request = Request(prompt, user=user, version=learned.version)
                    pending.append(_Pending(condition, task, request, k))
        return pending


def _plain(task: Task) -> Messages:
    """The request alone, as the model sees it in every condition without memory."""
    return [{"role": "user", "content": task.intent}]
