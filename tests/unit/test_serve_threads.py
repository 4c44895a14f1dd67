"""How the server shares the cores between decoding and the online trainer: decoding
takes every core while no update runs and gives the trainer its share while one does;
each thread's torch thread count is its own."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import torch
from bank_support import make_lora_dir, publish_dir

from adaptkit.bank import Engine, Sampling
from adaptkit.base_model import load_base
from adaptkit.home import Home
from adaptkit.registry import Registry
from adaptkit.router import Request
from adaptkit.serve import ServeConfig
from adaptkit.serve.metrics import ServeMetrics
from adaptkit.serve.scheduler import DecodeThreads, Finished, Job, Scheduler, use_threads
from adaptkit.serve.server import thread_split


def test_decoding_has_every_core_unless_an_update_runs() -> None:
    assert thread_split(ServeConfig(workers=1), cores=2) == (DecodeThreads(2, 1), 1)
    assert thread_split(ServeConfig(workers=1), cores=8) == (DecodeThreads(8, 4), 4)
    assert thread_split(ServeConfig(workers=1), cores=1) == (DecodeThreads(1, 1), 1)
    assert thread_split(ServeConfig(workers=0), cores=2) == (DecodeThreads(2, 2), 0)
    # --threads N: N for each side, whatever runs.
    assert thread_split(ServeConfig(workers=1, threads=3), cores=2) == (DecodeThreads(3, 3), 3)


def test_each_thread_keeps_its_own_torch_thread_count() -> None:
    seen: dict[int, int] = {}
    both_set = threading.Barrier(2)

    def side(count: int) -> None:
        use_threads(count)
        both_set.wait(10)  # the other thread has set its own count by now
        seen[count] = torch.get_num_threads()

    sides = [threading.Thread(target=side, args=(count,)) for count in (1, 2)]
    for thread in sides:
        thread.start()
    for thread in sides:
        thread.join(10)
    assert seen == {1: 1, 2: 2}


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("threads-world")
    home = Home(root / "home").ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    base = load_base(str(tiny_model_dir), home=home)
    adapter = make_lora_dir(base.model, root / "src" / "alice", seed=1, rank=4)
    publish_dir(registry, "alice", adapter, str(tiny_model_dir))
    with Engine(base, registry, shared_dir=root / "shared") as opened:
        yield opened


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
