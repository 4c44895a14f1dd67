"""The engine's step-wise decode (continuous batching) on the tiny model: rows that join a
running batch late, leave early or are retired get the answer they get alone; the
scheduler decodes with every core unless an online update runs."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from bank_support import make_lora_dir, publish_dir

from adaptkit.bank import Engine, Repetition, Sampling, SessionRow
from adaptkit.base_model import load_base
from adaptkit.errors import InputError, UnknownUserError
from adaptkit.home import Home
from adaptkit.prompting import as_messages, encode_prompt
from adaptkit.registry import Registry
from adaptkit.router import Request
from adaptkit.serve.metrics import ServeMetrics
from adaptkit.serve.scheduler import DecodeThreads, Finished, Job, Scheduler

PROMPTS = [
    "How long does it take me to get to the library?",
    "What should I cook for dinner tonight?",
    "What is the capital of France?",
    "weather station airport",
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("session-world")
    home = Home(root / "home").ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    base = load_base(str(tiny_model_dir), home=home)
    for seed, user in enumerate(("alice", "bob", "carol"), start=1):
        adapter = make_lora_dir(base.model, root / "src" / user, seed=seed, rank=2 + 2 * seed)
        publish_dir(registry, user, adapter, str(tiny_model_dir))
    with Engine(base, registry, shared_dir=root / "shared") as opened:
        yield opened


def alone(
    engine: Engine, request: Request, tokens: int, repetition: Repetition | None = None
) -> list[int]:
    return engine.generate([request], max_new_tokens=tokens, repetition=repetition)[0].tokens


def drain(session, rows: list[SessionRow]) -> None:
    while any(row.finish is None for row in rows):
        session.step()


def test_rows_joining_and_leaving_get_their_answer_alone(engine: Engine) -> None:
    users = ["alice", None, "bob", "carol", "alice", None, "bob"]
    lengths = [12, 5, 9, 14, 3, 11, 7]
    requests = [Request(PROMPTS[i % 4], user=u) for i, u in enumerate(users)]
    expected = [alone(engine, r, n) for r, n in zip(requests, lengths, strict=True)]
    assert len({tuple(e) for e in expected}) > 4  # the adapters really answer differently

    session = engine.session()
    rows: list[SessionRow] = []
    widths = []
    for request, length in zip(requests, lengths, strict=True):
        # One newcomer between every two steps, while the others are mid-answer.
        (row,) = session.admit([(request, Sampling(max_new_tokens=length))])
        rows.append(row)
        session.step()
        session.step()
        widths.append(len(session.rows))
    drain(session, rows)
    assert [row.tokens for row in rows] == expected
    assert [row.finish for row in rows] == ["length"] * len(rows)
    assert max(widths) > 1 and not session.rows  # rows shared steps, and all left


def test_a_retired_row_leaves_and_the_others_are_unaffected(engine: Engine) -> None:
    requests = [Request(PROMPTS[0], user="alice"), Request(PROMPTS[1], user="bob")]
    expected = alone(engine, requests[1], 10)
    session = engine.session()
    gone, kept = session.admit([(r, Sampling(max_new_tokens=10)) for r in requests])
    session.step()
    session.retire([gone])
    assert gone.finish == "retired" and session.rows == [kept]
    drain(session, [kept])
    assert kept.tokens == expected
    assert not any(engine.bank.cache.pinned(key) for key in gone.pinned)


def test_bad_rows_are_errors_and_the_good_ones_run(engine: Engine) -> None:
    session = engine.session()
    too_long = "airport " * 600
    outcome = session.admit(
        [
            (Request(PROMPTS[0], user="nobody"), Sampling()),
            (Request(PROMPTS[0], user="alice"), Sampling(max_new_tokens=4)),
            (Request(too_long), Sampling()),
            (Request(PROMPTS[0]), Sampling(temperature=-1, top_p=0)),
        ]
    )
    assert isinstance(outcome[0], UnknownUserError)
    assert isinstance(outcome[1], SessionRow)
    assert isinstance(outcome[2], InputError) and "context of 512 tokens" in str(outcome[2])
    assert "temperature" in str(outcome[3]) and "top_p" in str(outcome[3])
    drain(session, [outcome[1]])
    assert outcome[1].tokens == alone(engine, Request(PROMPTS[0], user="alice"), 4)


def test_sampling_with_a_seed_repeats_and_differs_from_greedy(engine: Engine) -> None:
    request = Request(PROMPTS[2], user="carol")
    sampled = []
    for _ in range(2):
        session = engine.session()
        (row,) = session.admit([(request, Sampling(12, temperature=1.5, top_p=0.95, seed=7))])
        drain(session, [row])
        sampled.append(row.tokens)
    assert sampled[0] == sampled[1]
    assert sampled[0] != alone(engine, request, 12)


def test_rows_with_repetition_control_joining_mid_answer_get_their_answer_alone(
    engine: Engine,
) -> None:
    """Each row keeps its own control and history (its prompt, never padding) while rows
    of other lengths, adapters and controls join, leave and are retired around it."""
    rows_in = [
        (Request(PROMPTS[0], user="alice"), Repetition(repetition_penalty=1.4), 16),
        (Request(PROMPTS[3]), Repetition(), 6),
        (Request(PROMPTS[1], user="bob"), Repetition(no_repeat_ngram_size=2), 14),
        (Request(PROMPTS[2], user="carol"), Repetition(frequency_penalty=1.0), 12),
        (Request(PROMPTS[1], user="alice"), Repetition(no_repeat_ngram_size=1), 18),
    ]
    expected = [alone(engine, r, n, c) for r, c, n in rows_in]
    plain = [alone(engine, r, n) for r, c, n in rows_in]
    changed = [e != p for e, p, (_, c, _) in zip(expected, plain, rows_in, strict=True) if c.active]
    assert all(changed)  # every control changes its row: the comparison means something

    session = engine.session()
    rows: list[SessionRow] = []
    retired = session.admit([(Request(PROMPTS[1] + " " * 3), Sampling(40))])[0]
    for request, control, length in rows_in:
        (row,) = session.admit([(request, Sampling(length, repetition=control))])
        rows.append(row)
        session.step()
        session.step()
        if len(rows) == 2:
            session.retire([retired])
    drain(session, rows)
    assert [row.tokens for row in rows] == expected


def test_sampled_rows_apply_their_control_before_sampling(engine: Engine) -> None:
    request = Request(PROMPTS[2], user="carol")
    control = Sampling(12, temperature=0.7, seed=3, repetition=Repetition(no_repeat_ngram_size=1))
    answers = []
    for neighbours in ([], [(Request(PROMPTS[0], user="bob"), Sampling(12))]):
        session = engine.session()
        row, *others = session.admit([(request, control), *neighbours])
        drain(session, [row, *others])
        answers.append(row.tokens)
    assert answers[0] == answers[1]  # its own generator and history, whoever shares the batch
    prompt_ids = set(encode_prompt(engine.base.tokenizer, as_messages(PROMPTS[2])))
    # no_repeat_ngram_size=1: no token of the prompt or of the answer comes twice.
    assert len(set(answers[0])) == len(answers[0]) and not prompt_ids & set(answers[0])


def answer(scheduler: Scheduler, prompt: str) -> Finished:
    async def ask() -> Finished:
        job = Job(Request(prompt, user="alice"), Sampling(4), [], asyncio.get_running_loop())
        scheduler.submit(job)
        while not isinstance(event := await asyncio.wait_for(job.events.get(), 60), Finished):
            pass
        return event

    return asyncio.run(ask())


def decoding(metrics: ServeMetrics) -> float | None:
    """The threads the scheduler's thread decoded with last, as /metrics shows them."""
    return metrics.registry.get_sample_value("adaptkit_decode_threads")


def test_the_scheduler_gives_up_cores_while_an_update_runs(engine: Engine) -> None:
    training = threading.Event()
    metrics = ServeMetrics()
    scheduler = Scheduler(
        engine, metrics, threads=DecodeThreads(alone=2, shared=1), training=training.is_set
    ).start()
    try:
        alone = answer(scheduler, "What should I cook tonight?")
        assert decoding(metrics) == 2
        training.set()
        shared = answer(scheduler, "What should I cook tonight?")
        assert decoding(metrics) == 1
        training.clear()
        answer(scheduler, "What should I cook tonight?")
        assert decoding(metrics) == 2
    finally:
        scheduler.stop()
    assert shared.text == alone.text  # the thread count changes the speed, not the answer


def test_the_batch_is_busy_from_half_full_waiting_requests_counted(engine: Engine) -> None:
    scheduler = Scheduler(engine, ServeMetrics(), max_batch=4)  # not started: jobs wait
    loop = asyncio.new_event_loop()
    try:
        jobs = [Job(Request(PROMPTS[0]), Sampling(max_new_tokens=2), [], loop) for _ in range(2)]
        assert not scheduler.busy()
        scheduler.submit(jobs[0])
        assert not scheduler.busy()
        scheduler.submit(jobs[1])
        assert scheduler.busy()
    finally:
        loop.close()


def test_a_request_joins_a_busy_batch_after_a_few_steps_with_its_answer_alone(
    engine: Engine,
) -> None:
    """max_batch 16: past 8 rows the batch is busy and joiners gather in pairs; a lone
    joiner still joins (after at most a few steps) and gets its answer alone."""
    lone = Request(PROMPTS[1], user="bob")
    expected = engine.generate([lone], max_new_tokens=6)[0].text
    scheduler = Scheduler(engine, ServeMetrics(), max_batch=16).start()

    async def run() -> tuple[Finished, int]:
        loop = asyncio.get_running_loop()

        async def finish(job: Job) -> Finished:
            scheduler.submit(job)
            while not isinstance(event := await asyncio.wait_for(job.events.get(), 120), Finished):
                pass
            return event

        long = [
            Job(Request(PROMPTS[i % 4], user="alice"), Sampling(60), [], loop) for i in range(9)
        ]
        running = [asyncio.create_task(finish(job)) for job in long]
        # The scheduler's thread counts a job as running just after its row is admitted.
        async with asyncio.timeout(60):
            while len(scheduler.session.rows) < 9 or not scheduler.busy():
                await asyncio.sleep(0.01)
        joined = await finish(Job(lone, Sampling(6), [], loop))
        open_rows = sum(1 for job in long if job.row is not None and job.row.finish is None)
        await asyncio.gather(*running)
        return joined, open_rows

    try:
        joined, still_open = asyncio.run(run())
    finally:
        scheduler.stop()
    assert joined.text == expected
    assert still_open > 0  # it joined while the long rows were decoding
