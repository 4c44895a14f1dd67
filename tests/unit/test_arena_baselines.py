"""The no-model label baselines beside the conditions: always answering the user's most
frequent past label, or the most frequent one overall."""

from __future__ import annotations

import json
from pathlib import Path

from adaptkit.arena import ArenaConfig, load_episodes
from adaptkit.arena.importers import label_eval
from adaptkit.arena.metrics import label_baselines, majority
from adaptkit.arena.report import markdown
from adaptkit.arena.runner import ArenaResult

LABELS = list("12345")


def _result(tmp_path: Path, past: dict[str, list[str]], gold: dict[str, list[str]]) -> ArenaResult:
    records, task_id = [], 0
    for user, answers in past.items():
        for answer in answers:
            task_id += 1
            records.append({"task_id": task_id, "user_id": user, "split": "history",
                            "intent": f"Rate review {task_id}.", "response": answer})  # fmt: skip
    for user, answers in gold.items():
        for answer in answers:
            task_id += 1
            records.append({"task_id": task_id, "user_id": user, "split": "deployment",
                            "intent": f"Rate review {task_id}.",
                            "eval": label_eval([answer], LABELS)})  # fmt: skip
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    suite = load_episodes(path)
    return ArenaResult(suite, ArenaConfig(), suite.users)


def test_user_and_global_majority_scored_by_each_tasks_checks(tmp_path: Path) -> None:
    result = _result(
        tmp_path,
        {"alice": ["4", "4", "5", "4", "4"], "bob": ["2", "2", "1", "2"]},
        {"alice": ["4", "4", "5"], "bob": ["2", "1"], "carol": ["3"]},  # carol: no history
    )
    baselines = label_baselines(result)
    assert baselines["label_task"] is True
    assert baselines["user_majority"]["per_user"] == {"alice": 0.6667, "bob": 0.5, "carol": 0.0}
    assert baselines["user_majority"]["success"] == 0.5 and baselines["user_majority"]["n"] == 6
    assert baselines["global_majority"]["answer"] == "4"
    assert baselines["global_majority"]["success"] == 0.3333


def test_ties_go_to_the_label_seen_first_and_free_text_is_no_label_task(tmp_path: Path) -> None:
    assert majority(["2", "1", "1", "2"]) == "2" and majority([]) is None
    free = _result(
        tmp_path,
        {"alice": [f"Answer number {i}." for i in range(6)]},
        {"alice": ["3"]},
    )
    assert label_baselines(free)["label_task"] is False


def test_report_shows_the_baselines_beside_the_conditions_only_for_label_tasks() -> None:
    condition = {"success": 0.4, "fraction_of_oracle": 0.8, "n": 10, "per_user": {},
                 "prompt_tokens_mean": 12.0, "must_exclude_hits": 0.0}  # fmt: skip
    summary = {
        "run": {
            "episodes": "e",
            "model": "m",
            "method": "sft",
            "retriever": "bm25",
            "users": [],
            "wall_seconds": 1.0,
        },  # fmt: skip
        "conditions": {"base": condition, "oracle": {**condition, "success": 0.5}},
        "learning_curve": {"points": [], "success": {}},
        "retention": {
            "retention": None,
            "adapter_probe_success": None,
            "base_probe_success": None,
            "probes": 0,
        },  # fmt: skip
        "leakage": {"rate": None, "leaked": 0, "eligible": 0},
        "cost": {"train_seconds_per_user_mean": None, "adapter_bytes_mean": None},
        "skipped": [],
        "baselines": {
            "label_task": True,
            "user_majority": {"success": 0.6, "n": 10, "per_user": {}},
            "global_majority": {"success": 0.3, "n": 10, "per_user": {}, "answer": "4"},
        },
    }
    text = markdown(summary)
    assert "| *user's most frequent label (no model)* | 0.600 | 1.200 | 10 | – | – |" in text
    assert "| *most frequent label overall (no model)* | 0.300 | 0.600 | 10 | – | – |" in text
    summary["baselines"] = {"label_task": False}
    assert "no model" not in markdown(summary)
