"""Episode loading: the bundled suite, AdaptArena's shape, and malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptkit.arena import (
    BUNDLED_SUITE,
    BUNDLED_SUITES,
    EpisodeFormatError,
    load_episodes,
    suite_path,
)
from adaptkit.arena.evaluators import contains
from adaptkit.arena.generate_suite import PROBES, generate
from adaptkit.gate.probes import DEFAULT_PROBES

REPO = Path(__file__).resolve().parents[2]
SAMPLES = [
    REPO / "tests" / "data" / "adaptarena_shape_sample.json",
    REPO.parent / "shared" / "arena" / "adaptarena_shape_sample.json",
]


@pytest.mark.parametrize("path", SAMPLES, ids=["committed-copy", "shared"])
def test_adaptarena_shape_loads_unchanged(path: Path) -> None:
    if not path.is_file():
        pytest.skip(f"{path} not present")
    suite = load_episodes(path)
    assert suite.users == ["User01", "User02"]
    first = suite.deployment["User01"][0]
    assert first.task_id == 2000
    assert first.intent.startswith("Could you find me the SKU")  # the "User01: " prefix is gone
    assert first.eval.must_include == ("B0TEST0001",)
    assert suite.deployment["User01"][1].eval.fuzzy_match
    assert suite.deployment["User02"][0].eval.exact_match == "Sourdough starter troubleshooting"
    live = suite.deployment["User02"][1]
    assert live.eval.skip_reason is not None and "program_html" in live.eval.skip_reason
    assert [t.eval.skip_reason is None for u in suite.users for t in suite.deployment[u]] == [
        True,
        True,
        True,
        False,
    ]


def test_bundled_suite_shape() -> None:
    suite = load_episodes(BUNDLED_SUITE)
    assert suite.users == [f"User{i:02d}" for i in range(1, 11)]
    assert len(suite.probes) >= 5
    for user in suite.users:
        history, tasks = suite.history[user], suite.deployment[user]
        assert len(history) >= 8 and len(tasks) >= 5
        assert all(t.oracle_intent and t.oracle_intent != t.intent for t in tasks)
        asked = {r.interaction.messages[-1].content for r in history}
        assert not asked & {t.intent for t in tasks}  # requests worded unlike the history
        # every habit a request tests was shown in the history at least once
        for task in tasks:
            value = task.eval.must_include[0]
            assert any(contains(r.text, value) for r in history), (user, value)


def test_users_differ_in_habits_not_only_values() -> None:
    records = generate(seed=5)
    habits = {}
    for record in records:
        if record.get("split") == "deployment":
            habits.setdefault(record["user_id"], set()).add(record["habit"])
    assert len({frozenset(h) for h in habits.values()}) >= 5


def test_committed_suite_is_what_the_generator_writes() -> None:
    lines = BUNDLED_SUITE.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == generate()


def test_other_seed_gives_a_different_valid_suite(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in generate(seed=11, users=4)))
    suite = load_episodes(path)
    assert suite.users == ["User01", "User02", "User03", "User04"]
    assert path.read_text() != BUNDLED_SUITE.read_text()


GOOD_HISTORY = {
    "task_id": 1,
    "user_id": "u1",
    "split": "history",
    "intent": "Hi?",
    "response": "Hello.",
}
GOOD_TASK = {
    "task_id": 2,
    "intent": "u1: How far?",
    "eval": {"eval_types": ["string_match"], "reference_answers": {"must_include": ["bike"]}},
}


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records))
    return path


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        (
            {
                **GOOD_TASK,
                "task_id": 3,
                "eval": {
                    "eval_types": ["string_match"],
                    "reference_answers": {"must_include": "bike"},
                },
            },
            "eval.reference_answers.must_include",
            "list",
        ),
        ({**GOOD_TASK, "task_id": 3, "split": "train"}, "split", "'train'"),
        ({k: v for k, v in GOOD_TASK.items() if k != "eval"} | {"task_id": 3}, "eval", "required"),
        ({**GOOD_TASK, "task_id": 3, "intent": "How far?"}, "user_id", "missing"),
        ({**GOOD_HISTORY, "task_id": 3, "response": None}, "response", "missing"),
        ({**GOOD_HISTORY, "task_id": 3, "feedback": {"rating": 5}}, "feedback.rating", "5"),
        ({**GOOD_TASK}, "task_id", "already used"),
        (
            {
                **GOOD_TASK,
                "task_id": 3,
                "eval": {"eval_types": ["string_match"], "reference_answers": {}},
            },
            "eval.reference_answers",
            "one of",
        ),
    ],
)
def test_malformed_record_names_file_line_and_field(
    tmp_path: Path, bad: dict, field: str, words: str
) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [GOOD_HISTORY, "", GOOD_TASK, bad])
    with pytest.raises(EpisodeFormatError) as caught:
        load_episodes(path)
    message = str(caught.value)
    assert f"{path}:4" in message and f"field '{field}'" in message and words in message
    assert caught.value.field == field


def test_json_list_errors_name_the_record_index(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([GOOD_TASK, {**GOOD_TASK, "task_id": 9, "eval": "yes"}]))
    with pytest.raises(EpisodeFormatError, match=r"bad\.json\[1\]: field 'eval'"):
        load_episodes(path)


def test_invalid_json_line(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [GOOD_TASK, "{not json"])
    with pytest.raises(EpisodeFormatError, match=r"bad\.jsonl:2: invalid JSON"):
        load_episodes(path)
    path = _write_jsonl(tmp_path / "blank.jsonl", [GOOD_TASK, "", "{not json"])
    with pytest.raises(EpisodeFormatError, match=r"blank\.jsonl:3: invalid JSON"):
        load_episodes(path)  # the blank line is skipped but counted


def test_invalid_json_list_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("[\n" + json.dumps(GOOD_TASK) + ",\n{not json}\n]")
    with pytest.raises(EpisodeFormatError, match=r"bad\.json:3: invalid JSON"):
        load_episodes(path)


def test_history_is_ordered_and_select_checks_users(tmp_path: Path) -> None:
    late = {**GOOD_HISTORY, "task_id": 7, "order": 5, "response": "Late."}
    early = {**GOOD_HISTORY, "task_id": 8, "order": 1, "response": "Early."}
    suite = load_episodes(_write_jsonl(tmp_path / "s.jsonl", [late, early, GOOD_TASK]))
    assert [r.interaction.response for r in suite.history["u1"]] == ["Early.", "Late."]
    with pytest.raises(Exception, match="nobody.*it has: u1"):
        suite.select(["nobody"])


def test_handwritten_held_out_suite_is_well_formed() -> None:
    path = suite_path(Path("handwritten"))
    assert path == BUNDLED_SUITES["handwritten"] and path.parent == BUNDLED_SUITE.parent
    suite = load_episodes(path)
    assert len(suite.users) >= 10 and len(suite.probes) >= 12
    theirs = {p.prompt for p in DEFAULT_PROBES} | {question for question, _ in PROBES}
    assert not {p.intent for p in suite.probes} & theirs  # its own, not the gate's or generator's
    accepted = {
        user: [r.interaction.sft_target for r in suite.history[user] if r.interaction.sft_target]
        for user in suite.users
    }
    lengths = {len(suite.history[user]) for user in suite.users}
    assert min(lengths) >= 8 and max(lengths) <= 14 and len(lengths) >= 4  # varied
    feedback = [r.interaction.feedback for u in suite.users for r in suite.history[u]]
    assert sum(f.edited is not None for f in feedback) >= 3
    assert sum(f.rating == -1 for f in feedback) >= 3
    for user in suite.users:
        tasks = suite.deployment[user]
        assert 5 <= len(tasks) <= 8
        asked = {r.interaction.messages[-1].content for r in suite.history[user]}
        for task in tasks:
            assert task.oracle_intent and task.oracle_intent != task.intent
            assert task.intent not in asked  # a new request, not a repeated one
            assert task.eval.must_include and not task.eval.skip_reason
            if "\n\n" not in task.intent:  # no listing to choose from: the habit was shown
                value = task.eval.must_include[0]
                assert any(contains(a, value) for a in accepted[user]), (user, value)
        # leakage is measurable: another user's accepted answers hold a value excluded here
        others = [a for other in suite.users if other != user for a in accepted[other]]
        excluded = {v for task in tasks for v in task.eval.must_exclude}
        assert any(contains(a, v) for a in others for v in excluded), user
