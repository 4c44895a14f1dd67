"""Feedback events: what a user said about an answer, validated before anything is written.

=========  =========================================  ==========================
kind       meaning                                    fields
=========  =========================================  ==========================
accept     the user went on with the answer (implicit)  -
up / down  thumbs up / thumbs down                    -
edit       the user corrected the answer              ``text``: the corrected answer
pair       preferred one of two answers               ``chosen``, ``rejected``
note       a stated preference or principle           ``text``: "I always cycle"
=========  =========================================  ==========================

Every kind but ``note`` refers to a recorded request (``request_id``); a note may stand
alone. ``FeedbackEvent.validate`` checks the event against its request; errors name the
field and say what to send instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from adaptkit.errors import InputError
from adaptkit.interactions import Interaction, text_problem
from adaptkit.prompting import as_messages
from adaptkit.user_ids import validate_user_id

EventKind = Literal["accept", "up", "down", "edit", "pair", "note"]
EVENT_KINDS: tuple[str, ...] = ("accept", "up", "down", "edit", "pair", "note")
MAX_TEXT_CHARS = 8000  # longer texts are almost certainly a client bug (a pasted document)


class FeedbackError(InputError):
    """A feedback event is malformed or refers to something that does not exist."""


@dataclass(frozen=True)
class Completion:
    """An answered request (the conversation and the answer given) feedback can refer to."""

    id: int
    user_id: str
    messages: tuple[dict[str, str], ...]  # the conversation, ending with the user's turn
    response: str
    version_number: int | None = None  # the adapter version that answered; None = base


@dataclass(frozen=True)
class FeedbackEvent:
    """One piece of feedback, as the app sends it (``id`` is set once it is logged)."""

    user_id: str
    kind: str
    request_id: int | None = None
    text: str | None = None  # edit: the corrected answer; note: the preference
    chosen: str | None = None  # pair
    rejected: str | None = None  # pair
    id: int | None = None
    created_at: datetime | None = None
    state: str = "pending"
    outcome: str = ""

    def payload(self) -> dict[str, Any]:
        values = {"text": self.text, "chosen": self.chosen, "rejected": self.rejected}
        return {key: value for key, value in values.items() if value is not None}

    def validate(self, request: Completion | None) -> None:
        """Raise ``FeedbackError`` naming every problem; ``request`` is the one referred to."""
        validate_user_id(self.user_id)
        where = f"feedback {self.kind!r} of user {self.user_id!r}"
        problems = []
        if self.kind not in EVENT_KINDS:
            raise FeedbackError(
                f"{where}: kind must be one of {', '.join(EVENT_KINDS)}, got {self.kind!r}"
            )
        needs_request = self.kind != "note"
        if needs_request and self.request_id is None:
            problems.append("'request_id' is required (the request this feedback is about)")
        if self.request_id is not None:
            if request is None:
                problems.append(
                    f"request {self.request_id} does not exist; record the request first "
                    "(FeedbackLog.record_completion / `adaptkit feedback USER --prompt ... "
                    "--response ...`)"
                )
            elif request.user_id != self.user_id:
                problems.append(
                    f"request {self.request_id} belongs to user {request.user_id!r}, "
                    f"not {self.user_id!r}"
                )
        wanted = {
            "edit": ("text",),
            "note": ("text",),
            "pair": ("chosen", "rejected"),
        }.get(self.kind, ())
        for name in ("text", "chosen", "rejected"):
            value = getattr(self, name)
            if name not in wanted:
                if value is not None:
                    problems.append(f"'{name}' is not used by a {self.kind!r} event; leave it out")
                continue
            if not isinstance(value, str) or not value.strip():
                problems.append(f"'{name}' must be a non-empty string, got {value!r}")
            elif len(value) > MAX_TEXT_CHARS:
                problems.append(f"'{name}' is {len(value)} characters; at most {MAX_TEXT_CHARS}")
            elif (problem := text_problem(value)) is not None:
                problems.append(f"'{name}' {problem}")
        if (
            self.kind == "pair"
            and isinstance(self.chosen, str)
            and isinstance(self.rejected, str)
            and self.chosen.strip() == self.rejected.strip()
            and self.chosen.strip()
        ):
            problems.append("'chosen' and 'rejected' are the same text: there is no preference")
        if (
            self.kind == "edit"
            and request is not None
            and isinstance(self.text, str)
            and self.text.strip() == request.response.strip()
        ):
            problems.append("the edit equals the original response; send 'accept' instead")
        if problems:
            raise FeedbackError(f"{where}: " + "; ".join(problems) + ". Nothing was recorded.")


@dataclass(frozen=True)
class EventBatch:
    """The pending events of one user taken for one update, with their requests."""

    user_id: str
    events: tuple[FeedbackEvent, ...]
    requests: dict[int, Completion] = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return [event.id for event in self.events if event.id is not None]


def events_from_log(user_id: str, interactions: Sequence[Interaction]) -> EventBatch:
    """One request per line with a response, and the events its feedback implies."""
    requests: dict[int, Completion] = {}
    events: list[FeedbackEvent] = []
    for index, interaction in enumerate(interactions, start=1):
        feedback = interaction.feedback
        messages = tuple(as_messages(interaction.messages))
        response = interaction.response if interaction.response is not None else feedback.rejected
        requests[index] = Completion(index, user_id, messages, response or "")
        event_id = len(events) + 1
        if feedback.edited is not None and interaction.response is not None:
            events.append(FeedbackEvent(user_id, "edit", index, text=feedback.edited, id=event_id))
        elif feedback.chosen is not None:
            events.append(
                FeedbackEvent(
                    user_id,
                    "pair",
                    index,
                    chosen=feedback.chosen,
                    rejected=feedback.rejected,
                    id=event_id,
                )
            )
        elif feedback.rating == -1:
            events.append(FeedbackEvent(user_id, "down", index, id=event_id))
        else:
            kind = "up" if feedback.rating == 1 else "accept"
            events.append(FeedbackEvent(user_id, kind, index, id=event_id))
        if feedback.note:
            events.append(
                FeedbackEvent(user_id, "note", None, text=feedback.note, id=len(events) + 1)
            )
    return EventBatch(user_id, tuple(events), requests)
