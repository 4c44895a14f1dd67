"""benchmarks/arena_floors.py: the floors of the full bundled suite, checked on a report."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from benchmark_support import load_benchmark


@pytest.fixture(scope="module")
def floors() -> ModuleType:
    return load_benchmark("arena_floors")


def _report(adapter: float = 0.84, memory: float | None = 0.04, **run: Any) -> dict[str, Any]:
    conditions: dict[str, Any] = {"base": {"success": 0.0}, "adapter": {"success": adapter}}
    if memory is not None:
        conditions["memory"] = {"success": memory}
    return {
        "run": {
            "episodes": "adaptkit/arena/data/starter_suite.jsonl",
            "users": [f"User{i:02d}" for i in range(1, 11)],
            "quick": False,
            "wall_seconds": 590.9,
            **run,
        },
        "conditions": conditions,
        "retention": {"retention": 0.9708},
        "leakage": {"rate": 0.0},
    }


def test_a_report_above_every_floor_meets_them_all(floors: ModuleType) -> None:
    verdict = floors.check_floors(_report())
    assert verdict["all_met"] and all(verdict["met"].values())
    assert verdict["values"]["adapter_minus_memory"] == 0.8
    assert verdict["thresholds"] == floors.FLOORS
    assert verdict["suite"]["full_bundled_suite"]


def test_each_missed_floor_is_named(floors: ModuleType) -> None:
    verdict = floors.check_floors(_report(adapter=0.3, memory=0.2, wall_seconds=900.5))
    assert not verdict["all_met"]
    missed = {name for name, ok in verdict["met"].items() if not ok}
    assert missed == {"adapter_success", "adapter_minus_memory", "wall_seconds"}
    # Exactly on a floor meets it.
    assert floors.check_floors(_report(wall_seconds=900.0))["met"]["wall_seconds"]


def test_a_missing_value_misses_its_floor_and_quick_runs_are_flagged(floors: ModuleType) -> None:
    verdict = floors.check_floors(_report(memory=None, quick=True))
    assert verdict["values"]["adapter_minus_memory"] is None
    assert not verdict["met"]["adapter_minus_memory"]
    assert not verdict["suite"]["full_bundled_suite"]


def test_main_prints_writes_and_exits_by_the_verdict(
    floors: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_report()))
    bad.write_text(json.dumps(_report(adapter=0.5)))
    out = tmp_path / "verdict.json"
    assert floors.main(["--report", str(good), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["all_met"]
    assert json.loads(capsys.readouterr().out)["met"]["leakage"]
    assert floors.main(["--report", str(bad)]) == 1
    assert floors.main(["--report", str(tmp_path / "missing.json")]) == 2
