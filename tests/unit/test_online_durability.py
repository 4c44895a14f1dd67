"""Durability: SIGKILL the trainer mid-update; every acknowledged event and the active
version survive, and a restarted trainer finishes the work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from adaptkit.base_model import load_base
from adaptkit.feedback import FeedbackEvent, FeedbackLog
from adaptkit.home import Home
from adaptkit.learning import LoraSpec
from adaptkit.online import OnlineConfig, OnlineTrainer
from adaptkit.registry import ADAPTER_WEIGHTS, Registry, sha256_file

CONFIG = OnlineConfig(steps=40, holdout_every=0, anchor_prompts=1, replay=1)

# The trainer process: the ordinary OnlineTrainer, with a step hook that says where it is
# (so the test kills it mid-update) and slows each step down to make the window wide.
TRAINER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from adaptkit.base_model import load_base
    from adaptkit.home import Home
    from adaptkit.learning import LoraSpec
    from adaptkit.online import OnlineConfig, OnlineTrainer, OnlineWorker
    from adaptkit.registry import Registry

    model_dir, root, marker = sys.argv[1:4]
    home = Home(Path(root))
    def step(index, seconds):
        Path(marker).write_text(str(index))
        time.sleep(0.2)
    trainer = OnlineTrainer(
        Registry(home.registry_url, home.adapters_dir), load_base(model_dir, home=home),
        config=OnlineConfig(steps=40, holdout_every=0, anchor_prompts=1, replay=1),
        lora=LoraSpec(rank=4), anchor_prompts=("Name three fruits.",), on_step=step,
    )
    OnlineWorker(trainer, poll_seconds=0.05).start()
    time.sleep(600)
    """
)


def record(log: FeedbackLog, n: int, start: int) -> list[int]:
    ids = []
    for i in range(start, start + n):
        request = log.record_completion("alice", f"How far is place {i}?", "By car.")
        ids.append(log.record(FeedbackEvent("alice", "edit", request.id, text=f"Bike, {i} min")).id)
    return ids


def test_sigkill_mid_update_loses_no_event_and_keeps_the_active_version(
    home: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    root = Home(home).ensure()
    registry = Registry(root.registry_url, root.adapters_dir)
    log = FeedbackLog(registry)
    base = load_base(str(tiny_model_dir), home=root)
    trainer = OnlineTrainer(
        registry,
        base,
        config=OnlineConfig(steps=2, holdout_every=0),
        lora=LoraSpec(rank=4),
        anchor_prompts=("Name three fruits.",),
    )
    acknowledged = record(log, 3, 0)
    v1 = trainer.update("alice").version
    trainer.close()

    acknowledged += record(log, 4, 10)
    marker = tmp_path / "step"
    process = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(tiny_model_dir), str(root.root), str(marker)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():  # wait until it is inside an update ...
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the trainer never started a step"
            time.sleep(0.05)
        # ... and keep acknowledging events while it trains, then kill it mid-step.
        acknowledged += record(log, 2, 20)
        assert int(marker.read_text()) < CONFIG.steps - 1
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    fresh = Registry(root.registry_url, root.adapters_dir)
    events = FeedbackLog(fresh).events("alice")
    assert sorted(e.id for e in events) == sorted(acknowledged)
    assert [e.id for e in events if e.state == "pending"] == acknowledged[3:]
    active = fresh.active_version("alice")
    assert active.number == v1.number
    assert sha256_file(Path(active.blob_path) / ADAPTER_WEIGHTS) == active.blob_sha256
    assert [v.number for v in fresh.versions("alice")] == [v1.number]

    # A restarted trainer picks the pending events up and finishes.
    restarted = OnlineTrainer(
        fresh,
        base,
        config=OnlineConfig(steps=2, holdout_every=0),
        lora=LoraSpec(rank=4),
        anchor_prompts=("Name three fruits.",),
    )
    try:
        result = restarted.update("alice")
        assert result.promoted and result.version.parent_number == v1.number
        assert FeedbackLog(fresh).pending("alice").events == ()
    finally:
        restarted.close()
