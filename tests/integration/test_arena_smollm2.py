"""The arena on the real packaged SmolLM2-135M: AdaptArena's own task shape is scored, and
one bundled user's adapter is learned through the toolkit and changes the answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptkit.arena import ArenaOptions, load_episodes, run_arena
from adaptkit.training import TrainConfig

pytestmark = pytest.mark.integration
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "adaptarena_shape_sample.json"


def test_adaptarena_shaped_file_is_scored(tmp_path: Path, smollm2_home: Path) -> None:
    out = tmp_path / "out"
    paths = run_arena(
        ArenaOptions(
            out=out,
            episodes=SAMPLE,
            conditions=("base", "oracle"),
            home=smollm2_home,
            max_new_tokens=16,
            progress=False,
        )
    )
    report = json.loads(paths["json"].read_text())
    assert report["conditions"]["base"]["n"] == 3  # three string_match records scored
    assert 0.0 <= report["conditions"]["base"]["success"] <= 1.0
    assert [s["task_id"] for s in report["skipped"]] == ["2003"]
    assert "program_html" in report["skipped"][0]["reason"]
    answered = {a["task_id"] for a in report["answers"] if a["condition"] == "base"}
    assert answered == {2000, 2001, 2002}
    assert "| 2003 | User02 |" in paths["markdown"].read_text()


def test_one_user_learns_through_the_registry(tmp_path: Path, smollm2_home: Path) -> None:
    out = tmp_path / "out"
    paths = run_arena(
        ArenaOptions(
            out=out,
            conditions=("base", "adapter"),
            users=("User02",),
            home=smollm2_home,
            curve_points=(),
            max_new_tokens=24,
            sft=TrainConfig(steps=24, lr=4e-3),  # the default method, sft-kl
            progress=False,
        )
    )
    report = json.loads(paths["json"].read_text())
    answers = {(a["condition"], a["task_id"]): a["answer"] for a in report["answers"]}
    tasks = load_episodes(ArenaOptions(out=out).episodes).deployment["User02"]
    changed = sum(answers[("adapter", t.task_id)] != answers[("base", t.task_id)] for t in tasks)
    assert changed >= 3  # the adapter, not the base model, answered
    adapter = report["conditions"]["adapter"]["success"]
    assert adapter > report["conditions"]["base"]["success"]
    assert report["cost"]["adapter_bytes_per_user"]["User02"] > 1_000_000  # r=8, 12 layers
    assert report["retention"]["probes"] == 24
