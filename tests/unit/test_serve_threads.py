"""How the server shares the cores between decoding and the online trainer: decoding
takes every core while no update runs and gives the trainer its share while one does
(the scheduler's side: ``test_serve_session.py``); each thread's torch thread count is
its own; while the batch is busy, the trainer computes at most its share of the time; an
update's end wakes the requests waiting for feedback to be learned, from the trainer's
thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from adaptkit.errors import InputError
from adaptkit.serve import ServeConfig
from adaptkit.serve.learner import LearningBudget, Updates
from adaptkit.serve.scheduler import DecodeThreads, use_threads
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


def elapsed(call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def test_a_busy_batch_pauses_learning_for_the_rest_of_its_share_and_no_longer() -> None:
    busy, closed = threading.Event(), threading.Event()
    busy.set()
    budget = LearningBudget(0.5, busy.is_set)
    assert elapsed(lambda: budget.wait(closed)) < 5  # nothing spent yet: no pause
    budget.spent(0.3)  # at a share of 0.5, 0.3 s of training earns 0.3 s of decoding
    assert elapsed(lambda: budget.wait(closed)) >= 0.3
    budget.spent(120)  # a pause of 120 s ...
    threading.Timer(0.2, busy.clear).start()
    assert elapsed(lambda: budget.wait(closed)) < 60  # ... that ends when the batch calms
    busy.set()
    budget.spent(120)
    budget.spent(0.001)  # an update that found nothing to train: the pause stands
    threading.Timer(0.3, closed.set).start()
    assert elapsed(lambda: budget.wait(closed)) >= 0.3
    closed.clear()
    threading.Timer(0.2, closed.set).start()
    assert elapsed(lambda: budget.wait(closed)) < 60  # ... or the server closes
    unlimited = LearningBudget(1.0, busy.is_set)
    unlimited.spent(120)
    assert elapsed(lambda: unlimited.wait(threading.Event())) < 5


def test_the_learning_share_is_checked() -> None:
    with pytest.raises(InputError, match=r"--learn-share must be in \(0, 1\], got 0"):
        ServeConfig(learn_share=0)
    with pytest.raises(ValueError, match="share"):
        LearningBudget(1.5, lambda: False)


def test_an_update_on_another_thread_wakes_whoever_waited_since_before_it() -> None:
    updates = Updates()
    updates.notify()  # no reader yet: nothing to wake, nothing kept

    async def scenario() -> tuple[bool, bool, bool]:
        before = updates.since()  # taken before the update, as a reader does
        assert updates.since() is before  # one event per update to come
        trainer = threading.Thread(target=updates.notify)
        trainer.start()
        trainer.join()  # the update ended before the reader started to wait ...
        woken = await asyncio.wait_for(before.wait(), 30)  # ... and still wakes it
        after = updates.since()  # the next update's event is a new one, not yet set
        return woken, after is before, after.is_set()

    assert asyncio.run(scenario()) == (True, False, False)
    updates.notify()  # its loop is closed now (the server stopped): nothing to wake, no error
