"""Importers of public per-user benchmarks: each fixture (our own content in the exact
schema of LaMP, PEFT-U and PrefEval) becomes an episode file the arena loads, label
checks are unambiguous, and bad input names file, record and field, writing nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from adaptkit.arena import load_episodes, score
from adaptkit.arena.episodes import EvalSpec
from adaptkit.arena.importers import (
    ImportFormatError,
    ImportOptions,
    import_episodes,
    label_eval,
)
from adaptkit.cli.main import main
from adaptkit.errors import InputError

DATA = Path(__file__).resolve().parents[1] / "data" / "importers"
PREFEVAL = DATA / "prefeval"
TOPIC = "travel_getaways.json"


def _spec(block: dict[str, Any]) -> EvalSpec:
    refs = block["reference_answers"]
    return EvalSpec(
        tuple(block["eval_types"]),
        must_include=tuple(refs.get("must_include", ())),
        must_exclude=tuple(refs.get("must_exclude", ())),
        fuzzy_match=tuple(refs.get("fuzzy_match", ())),
    )


def _lamp(tmp_path: Path, name: str, **options: Any) -> Path:
    out = tmp_path / f"{name}.jsonl"
    golds = str(DATA / f"{name}_outputs.json")
    import_episodes(
        "lamp", DATA / f"{name}_questions.json", out, ImportOptions(golds=golds, **options)
    )
    return out


def _write(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


# ---------------------------------------------------------------- label checks


@pytest.mark.parametrize(
    ("answer", "passed"),
    [("4", True), ("Rating: 4", True), ("4.", True), ("14", False), ("4 out of 5", False),
     ("5", False), ("", False)],
)  # fmt: skip
def test_digit_labels_pass_only_an_answer_naming_that_one_digit(answer: str, passed: bool) -> None:
    spec = _spec(label_eval(["4"], list("12345")))
    assert score(answer, spec).passed is passed


def test_ten_is_not_the_rating_one() -> None:
    assert not score("10", _spec(label_eval(["1"], list("12345")))).passed
    assert score("1", _spec(label_eval(["1"], list("12345")))).passed


@pytest.mark.parametrize(
    ("gold", "answer", "passed"),
    [("Hateful", "Hateful", True), ("Hateful", "Non-hateful", False),
     ("Non-hateful", "Non-hateful", True), ("Non-hateful", "Hateful", False),
     ("positive", "veryPositive", False), ("veryPositive", "veryPositive", True),
     ("[1]", "[1]", True), ("[1]", "[1] or [2]", False)],
)  # fmt: skip
def test_a_label_inside_another_label_is_told_apart(gold: str, answer: str, passed: bool) -> None:
    labels = ["Hateful", "Non-hateful"] if "ateful" in gold else ["positive", "veryPositive"]
    labels = ["[1]", "[2]"] if gold.startswith("[") else labels
    assert score(answer, _spec(label_eval([gold], labels))).passed is passed


# ---------------------------------------------------------------- LaMP


def test_lamp3_ratings_fixture_imports_and_loads(tmp_path: Path) -> None:
    suite = load_episodes(_lamp(tmp_path, "lamp3"))
    # three questions over one profile are one user's three requests
    assert suite.users == ["lamp-3100", "lamp-3110", "lamp-3120", "lamp-3130", "lamp-3140"]
    for user in suite.users:
        assert len(suite.history[user]) == 14 and len(suite.deployment[user]) == 3
    first = suite.history["lamp-3110"][0]
    assert first.interaction.messages[-1].content.startswith("What is the score of the following")
    assert first.interaction.response in list("12345")
    task = suite.deployment["lamp-3110"][0]
    assert task.eval.must_include == ("2",) and "1" in task.eval.must_exclude
    assert task.oracle_intent is None  # LaMP states no preference


def test_lamp2_movie_tags_use_every_tag_the_question_offers(tmp_path: Path) -> None:
    suite = load_episodes(_lamp(tmp_path, "lamp2"))
    task = suite.deployment["lamp-22010"][0]
    assert task.eval.must_include == ("comedy",)
    assert "violence" in task.eval.must_exclude  # offered by the question, used by nobody
    assert "dark comedy" in task.eval.must_exclude  # contains the gold: still another label
    assert (
        suite.history["lamp-22010"][0]
        .interaction.messages[-1]
        .content.startswith("Which tag does this movie relate to")
    )


def test_lamp5_titles_are_fuzzy_matched_and_limits_apply(tmp_path: Path) -> None:
    suite = load_episodes(_lamp(tmp_path, "lamp5", max_users=2, max_history=4, max_tasks=1))
    assert len(suite.users) == 2
    for user in suite.users:
        assert len(suite.history[user]) == 4 and len(suite.deployment[user]) == 1
        (gold,) = suite.deployment[user][0].eval.fuzzy_match
        assert score(gold, suite.deployment[user][0].eval).passed


def test_lamp1_citation_and_lamp2_news(tmp_path: Path) -> None:
    profile = [{"id": "1", "title": "Solar ovens", "abstract": "We cook with sunlight."},
               {"id": "2", "title": "Empty", "abstract": ""}]  # fmt: skip
    question = {"id": "7", "input": 'For an author who has written the paper with the title '
                '"Sun food", which reference is related? [1]: "Solar cookers" [2]: "Ice"',
                "profile": profile}  # fmt: skip
    out = tmp_path / "l1.jsonl"
    golds = _write(
        tmp_path / "g1.json", {"task": "LaMP_1", "golds": [{"id": "7", "output": "[1]"}]}
    )
    import_episodes(
        "lamp", _write(tmp_path / "q1.json", [question]), out, ImportOptions(golds=str(golds))
    )
    suite = load_episodes(out)
    (record,) = suite.history["lamp-7"]  # the item without an abstract is skipped
    assert record.interaction.response == "Solar ovens"
    assert suite.deployment["lamp-7"][0].eval.must_exclude == ("[2]",)

    news = {"id": "8", "input": "Which category does this article relate to among the following "
            "categories? categories: [sports, travel, food & drink] article: A new stadium.",
            "profile": [{"id": "1", "text": "Marathon results", "category": "sports"}]}  # fmt: skip
    golds = _write(
        tmp_path / "g2.json", {"task": "LaMP_2", "golds": [{"id": "8", "output": "sports"}]}
    )
    import_episodes(
        "lamp", _write(tmp_path / "q2.json", [news]), out, ImportOptions(golds=str(golds))
    )
    suite = load_episodes(out)
    assert (
        suite.history["lamp-8"][0]
        .interaction.messages[-1]
        .content.endswith("article: Marathon results")
    )
    assert suite.deployment["lamp-8"][0].eval.must_exclude == ("food & drink", "travel")


# ---------------------------------------------------------------- PEFT-U


def test_peft_u_fixture_train_is_history_test_is_deployment(tmp_path: Path) -> None:
    out = tmp_path / "peft.jsonl"
    counts = import_episodes("peft-u", DATA / "peft_u_user_data.json", out, ImportOptions())
    assert counts == {"users": 5, "history": 70, "deployment": 25}
    suite = load_episodes(out)
    raw = json.loads((DATA / "peft_u_user_data.json").read_text())
    first = suite.history["peftu-17"][0]
    sample = next(iter(raw["17"]["train"].values()))
    assert first.interaction.response == ", ".join(sample["label"])
    assert sample["text"] in first.interaction.messages[-1].content
    assert "Answer with one of: 0, 1, 2." in first.interaction.messages[-1].content
    asked = [t.intent for t in suite.deployment["peftu-17"]]
    assert all(any(s["text"] in a for a in asked) for s in raw["17"]["test"].values())
    assert not any(s["text"] in " ".join(asked) for s in raw["17"]["val"].values())

    import_episodes(
        "peft-u", DATA / "peft_u_user_data.json", out,
        ImportOptions(instruction="How rude is this, 0 to 2?"),
    )  # fmt: skip
    assert load_episodes(out).deployment["peftu-23"][0].intent.startswith("How rude is this")


# ---------------------------------------------------------------- PrefEval


def _prefeval(tmp_path: Path, implicit: Path, **options: Any) -> Path:
    out = tmp_path / "pref.jsonl"
    mcq = str(PREFEVAL / "mcq_options" / TOPIC)
    import_episodes("prefeval", implicit, out, ImportOptions(mcq=mcq, **options))
    return out


def test_prefeval_mcq_answer_is_the_option_that_follows_the_preference(tmp_path: Path) -> None:
    implicit = PREFEVAL / "choice-based" / TOPIC
    suite = load_episodes(_prefeval(tmp_path, implicit, per_user=3))
    assert suite.users == [f"prefeval-travel-getaways-00{i}" for i in range(4)]
    records = json.loads(implicit.read_text())
    mcq = json.loads((PREFEVAL / "mcq_options" / TOPIC).read_text())
    for number, user in enumerate(suite.users):
        assert len(suite.history[user]) == 3 and len(suite.deployment[user]) == 3
        for offset, task in enumerate(suite.deployment[user]):
            index = 3 * number + offset
            (letter,) = task.eval.must_include
            line = next(x for x in task.intent.splitlines() if x.startswith(letter))
            assert line == f"{letter} {mcq[index]['classification_task_options'][0]}"
            assert task.oracle_intent.startswith(records[index]["preference"])
            assert score(line, task.eval).passed and not score("(A) (B)", task.eval).passed
        past = suite.history[user][0].interaction
        assert past.response.endswith(records[3 * number]["aligned_op"])


def test_prefeval_persona_driven_turns_are_history(tmp_path: Path) -> None:
    records = json.loads((PREFEVAL / "choice-based" / TOPIC).read_text())
    persona = [
        {
            "preference": r["preference"],
            "question": r["question"],
            "persona": "A retired teacher",
            "conversation": {
                str(k): {"user": f"Turn {k}: {r['preference']}", "assistant": f"Noted {k}."}
                for k in range(11)
            },
        }
        for r in records
    ]
    implicit = _write(tmp_path / TOPIC, persona)
    suite = load_episodes(_prefeval(tmp_path, implicit, max_users=2))
    history = suite.history["prefeval-travel-getaways-000"]
    assert [r.interaction.response for r in history] == [f"Noted {k}." for k in range(11)]


# ---------------------------------------------------------------- errors


def _bad_lamp3(tmp_path: Path, change) -> tuple[Path, Path]:
    questions = json.loads((DATA / "lamp3_questions.json").read_text())
    golds = json.loads((DATA / "lamp3_outputs.json").read_text())
    change(questions, golds)
    return _write(tmp_path / "q.json", questions), _write(tmp_path / "g.json", golds)


@pytest.mark.parametrize(
    ("change", "where", "field"),
    [
        (lambda q, g: q[1]["profile"][3].pop("score"), "q.json[1].profile[3]", "score"),
        (lambda q, g: q[2].pop("input"), "q.json[2]", "input"),
        (lambda q, g: q[0].update(profile=[]), "q.json[0]", "profile"),
        (lambda q, g: g["golds"].pop(0), "q.json[0]", "id"),
        (lambda q, g: g.update(task="LaMP_9"), "g.json", "task"),
        (lambda q, g: g["golds"][0].update(output="7"), "g.json", "golds"),
        (lambda q, g: q[0].update(input="no marker here"), "q.json[0]", "input"),
    ],
)
def test_bad_lamp_input_names_file_record_field_and_writes_nothing(
    tmp_path: Path, change, where: str, field: str
) -> None:
    questions, golds = _bad_lamp3(tmp_path, change)
    out = tmp_path / "episodes.jsonl"
    out.write_text("previous contents\n")
    with pytest.raises(ImportFormatError) as caught:
        import_episodes("lamp", questions, out, ImportOptions(golds=str(golds)))
    assert str(caught.value).startswith(str(tmp_path / where))
    assert f"field '{field}'" in str(caught.value)
    assert out.read_text() == "previous contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episodes.jsonl", "g.json", "q.json"]


def test_bad_peft_u_and_prefeval_input_names_file_record_field(tmp_path: Path) -> None:
    users = json.loads((DATA / "peft_u_user_data.json").read_text())
    sample = next(iter(users["31"]["train"]))
    users["31"]["train"][sample]["label"] = [""]
    path = _write(tmp_path / "users.json", users)
    with pytest.raises(
        ImportFormatError, match=rf"users.json\['31'\].train\['{sample}'\]: field 'label'"
    ):
        import_episodes("peft-u", path, tmp_path / "o.jsonl", ImportOptions())
    del users["31"]["train"]
    with pytest.raises(ImportFormatError, match=r"\['31'\]: field 'train'"):
        import_episodes("peft-u", _write(path, users), tmp_path / "o.jsonl", ImportOptions())

    records = json.loads((PREFEVAL / "choice-based" / TOPIC).read_text())
    records[4]["question"] = "Something else entirely?"
    implicit = _write(tmp_path / TOPIC, records)
    with pytest.raises(
        ImportFormatError, match=r"mcq_options/travel_getaways.json\[4\]: field 'question'"
    ):
        _prefeval(tmp_path, implicit)
    records = json.loads((PREFEVAL / "choice-based" / TOPIC).read_text())
    records[2]["aligned_op"] = "An option nobody offered."
    with pytest.raises(ImportFormatError, match=r"\[2\]: field 'aligned_op'"):
        _prefeval(tmp_path, _write(implicit, records))
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "pref.jsonl").exists()


def test_flags_a_format_does_not_read_or_needs_are_named(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    with pytest.raises(InputError, match="--golds: required"):
        import_episodes("lamp", DATA / "lamp3_questions.json", out, ImportOptions())
    with pytest.raises(InputError, match="--mcq: not read by the peft-u importer"):
        import_episodes("peft-u", DATA / "peft_u_user_data.json", out, ImportOptions(mcq="x"))
    with pytest.raises(InputError, match="--mcq: required"):
        import_episodes("prefeval", PREFEVAL / "choice-based" / TOPIC, out, ImportOptions())
    with pytest.raises(InputError, match="--per-user must be >= 1"):
        ImportOptions(per_user=0)
    with pytest.raises(InputError, match="PATH .*missing.json: no such file"):
        import_episodes("peft-u", tmp_path / "missing.json", out, ImportOptions())
    assert not out.exists()


def test_cli_import_writes_episodes_and_refuses_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "lamp3.jsonl"
    args = ["arena", "import", "lamp", str(DATA / "lamp3_questions.json"), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--golds", str(DATA / "lamp3_outputs.json")])
    assert result.exit_code == 0, result.output
    assert "5 users, 70 history records, 15 deployment requests" in result.output
    assert load_episodes(out).users
    broken = _write(tmp_path / "golds.json", {"task": "LaMP_3", "golds": {}})
    result = CliRunner().invoke(main, [*args, "--golds", str(broken), "--max-users", "2"])
    assert result.exit_code == 2
    assert f"{broken}: field 'golds': expected a list" in result.output
    result = CliRunner().invoke(
        main, ["arena", "import", "lamp", "x.json", "--out", str(out), "--max-users", "-1"]
    )
    assert result.exit_code == 2 and "--max-users must be >= 0" in result.output
