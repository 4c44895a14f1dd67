"""The arena run: every condition on every user's deployment requests, the online
learning curve, probes for retention, cross-user answers for leakage.

Order of work (one shared base model throughout):

1. prompt-only conditions (``base``, ``oracle``, ``memory``) for all users, batched,
   plus the probes on the base model;
2. per user, the history streamed in timeline order: after the first k records
   (k = 1, 2, 4, ... while k <= n/2, then n) the learner trains the user's adapter
   and the deployment requests are answered with it (the learning curve; k = 0 is
   ``base``). After all n records the final adapter also answers ``adapter+memory``,
   the probes, and the previous user's requests (leakage). ``adapter`` answers are
   made whenever any adapter condition runs: they are the curve's last point.

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
from adaptkit.arena.retrieval import Retriever
from adaptkit.errors import InputError


@dataclass(frozen=True)
class ArenaConfig:
    conditions: tuple[str, ...] = tuple(CONDITIONS)
    memory_k: int = 3  # history records retrieved into the memory prompt
    max_new_tokens: int = 32
    curve_points: tuple[int, ...] | None = None  # None: 0, 1, 2, 4, ..., n
    batch_size: int = 16  # prompts per generation call of the prompt-only phase
    leakage: bool = True

    def __post_init__(self) -> None:
        problems = []
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            problems.append(f"--conditions: unknown {', '.join(unknown)}")
        if self.memory_k < 1:
            problems.append(f"--memory-k must be >= 1, got {self.memory_k}")
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


class _Batch:
    """Prompts collected for one generation call, each with what to do with its answer."""

    def __init__(self) -> None:
        self.prompts: list[Messages] = []
        self.meta: list[tuple[str, Task, str | None, int | None]] = []

    def add(
        self, condition: str, task: Task, prompt: Messages, adapter_user: str | None, k: int | None
    ) -> None:
        self.prompts.append(prompt)
        self.meta.append((condition, task, adapter_user, k))


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

    def _flush(self, batch: _Batch, user: str | None, result: ArenaResult) -> list[Answer]:
        texts = self.responder.answer(
            user, batch.prompts, max_new_tokens=self.config.max_new_tokens
        )
        answers = []
        for prompt, text, (condition, task, adapter_user, k) in zip(
            batch.prompts, texts, batch.meta, strict=True
        ):
            outcome = score(text, task.eval, intent=task.intent, judge=self.judge)
            answers.append(
                Answer(
                    condition,
                    task.task_id,
                    task.user_id,
                    adapter_user,
                    k,
                    text,
                    outcome.passed,
                    self.responder.prompt_tokens(prompt),
                    outcome.checks,
                    tuple(excluded_hits(text, task.eval)),
                )
            )
        result.answers.extend(answers)
        return answers

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

        # 1. Prompt-only conditions, all users in shared batches.
        plain = _Batch()
        for condition in (c for c in wanted if not c.uses_adapter):
            for user in users:
                for task in tasks[user]:
                    history = suite.history.get(user, ())
                    plain.add(
                        condition.name, task, self._prompt(condition, task, history), None, None
                    )
        if adapter_conditions:
            for task in probes:
                plain.add(
                    "probe:base", task, [{"role": "user", "content": task.intent}], None, None
                )
        chunks = range(0, len(plain.prompts), self.config.batch_size)
        for start in tqdm(chunks, desc="base model", unit="batch", disable=not self.progress):
            chunk = _Batch()
            chunk.prompts = plain.prompts[start : start + self.config.batch_size]
            chunk.meta = plain.meta[start : start + self.config.batch_size]
            self._flush(chunk, None, result)

        # 2. Per user: stream the history, learn, answer.
        if adapter_conditions:
            self._adapters(suite, users, tasks, probes, wanted, result)
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
    ) -> None:
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
        bar = tqdm(trainable, desc="users (learn + answer)", unit="user", disable=not self.progress)
        for index, user in enumerate(bar):
            history = suite.history[user]
            points = [k for k in curve_points(len(history), self.config.curve_points) if k > 0]
            for k in points:
                bar.set_postfix(user=user, k=k)
                learned = self.learner.learn(user, history[:k])
                result.learned.setdefault(user, []).append((k, learned))
                batch = _Batch()
                final = k == len(history)
                for task in tasks[user]:
                    plain_prompt = [{"role": "user", "content": task.intent}]
                    batch.add("adapter" if final else "curve", task, plain_prompt, user, k)
                if final:
                    if CONDITIONS["adapter+memory"] in wanted:
                        memory = CONDITIONS["adapter+memory"]
                        for task in tasks[user]:
                            batch.add(
                                memory.name, task, self._prompt(memory, task, history), user, k
                            )
                    for task in probes:
                        batch.add(
                            "probe:adapter",
                            task,
                            [{"role": "user", "content": task.intent}],
                            user,
                            k,
                        )
                    victim = trainable[index - 1] if len(trainable) > 1 else None
                    if self.config.leakage and victim is not None:
                        for task in tasks[victim]:
                            batch.add(
                                "leakage", task, [{"role": "user", "content": task.intent}], user, k
                            )
                self._flush(batch, user, result)
