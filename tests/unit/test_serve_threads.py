"""How the server shares the cores between decoding and the online trainer: decoding
takes every core while no update runs and gives the trainer its share while one does
(the scheduler's side: ``test_serve_session.py``); each thread's torch thread count is
its own."""

from __future__ import annotations

import threading

import torch

from adaptkit.serve import ServeConfig
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
