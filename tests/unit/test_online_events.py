"""The feedback log: every kind is stored before acknowledgement; bad input writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptkit.errors import InputError, UnknownUserError
from adaptkit.feedback import FeedbackError, FeedbackEvent, FeedbackLog
from adaptkit.home import Home
from adaptkit.registry import Registry


@pytest.fixture
def log(home: Path, db_url: str) -> FeedbackLog:
    root = Home(home).ensure()
    return FeedbackLog(Registry(db_url, root.adapters_dir))


def test_every_kind_is_recorded_with_its_request(log: FeedbackLog) -> None:
    request = log.record_completion("alice", "How do I get to work?", "Drive, 10 minutes.")
    sent = [
        FeedbackEvent("alice", "accept", request.id),
        FeedbackEvent("alice", "up", request.id),
        FeedbackEvent("alice", "down", request.id),
        FeedbackEvent("alice", "edit", request.id, text="Cycle, 15 minutes."),
        FeedbackEvent("alice", "pair", request.id, chosen="Cycle.", rejected="Drive."),
        FeedbackEvent("alice", "note", text="I always cycle"),
    ]
    acknowledged = [log.record(event) for event in sent]
    assert [e.id for e in acknowledged] == sorted(e.id for e in acknowledged)
    # A fresh log over the same database sees exactly what was acknowledged.
    url = log.registry.engine.url.render_as_string(hide_password=False)
    again = FeedbackLog(Registry(url, log.registry.blobs.root))
    stored = again.pending("alice")
    assert [(e.kind, e.request_id, e.text, e.chosen) for e in stored.events] == [
        (e.kind, e.request_id, e.text, e.chosen) for e in sent
    ]
    assert stored.requests[request.id].response == "Drive, 10 minutes."
    assert again.notes("alice") == ["I always cycle"]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (FeedbackEvent("alice", "edit", 1, text="   "), "'text' must be a non-empty string"),
        (FeedbackEvent("alice", "edit", 1, text="Drive."), "equals the original response"),
        (FeedbackEvent("alice", "pair", 1, chosen="A", rejected=" A "), "the same text"),
        (FeedbackEvent("alice", "pair", 1, chosen="A"), "'rejected' must be a non-empty"),
        (FeedbackEvent("alice", "up", 99), "request 99 does not exist"),
        (FeedbackEvent("alice", "up"), "'request_id' is required"),
        (FeedbackEvent("alice", "accept", 1, text="x"), "'text' is not used"),
        (FeedbackEvent("alice", "like", 1), "kind must be one of"),
        (FeedbackEvent("alice", "up", 2), "belongs to user 'bob'"),
    ],
)
def test_bad_events_are_refused_and_nothing_is_written(
    log: FeedbackLog, event: FeedbackEvent, message: str
) -> None:
    log.record_completion("alice", "How do I get to work?", "Drive.")
    log.record_completion("bob", "How do I get to work?", "Drive.")
    with pytest.raises(FeedbackError, match=message):
        log.record(event)
    assert log.events("alice") == []


def test_unknown_user_and_bad_request_are_refused(log: FeedbackLog) -> None:
    with pytest.raises(UnknownUserError, match="unknown user 'carol'"):
        log.record(FeedbackEvent("carol", "note", text="I always cycle"))
    with pytest.raises(InputError, match="not a valid user id"):
        log.record_completion("../etc", "hi", "hello")
    with pytest.raises(FeedbackError, match="response must not be empty"):
        log.record_completion("alice", "hi", " ")
    with pytest.raises(FeedbackError, match="end with the user's turn"):
        log.record_completion("alice", [{"role": "assistant", "content": "hi"}], "hello")


def test_an_event_is_settled_once(log: FeedbackLog) -> None:
    request = log.record_completion("alice", "hi", "hello")
    event = log.record(FeedbackEvent("alice", "up", request.id))
    log.settle({event.id: "skipped: test"}, rejected=False)
    with pytest.raises(FeedbackError, match="already settled"):
        log.settle({event.id: "skipped: again"}, rejected=False)
    assert log.events("alice")[0].outcome == "skipped: test"
    assert log.pending("alice").events == ()
