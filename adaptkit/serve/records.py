"""What the server stores and reads back: completions under the id the response carried,
feedback bodies turned into the feedback log's events, and what came of each event.

Plain functions over the registry's database (run in a worker thread, never on the
event loop)."""

from __future__ import annotations

from sqlalchemy import select

from adaptkit.feedback import FeedbackError, FeedbackEvent, FeedbackLog
from adaptkit.registry import (
    CONSUMED,
    PENDING,
    AdapterVersionRow,
    FeedbackEventRow,
    Registry,
    RequestRow,
    VersionInfo,
)
from adaptkit.registry.schema import ServedCompletionRow
from adaptkit.router import Plan
from adaptkit.router import Request as EngineRequest
from adaptkit.serve.errors import ApiError
from adaptkit.serve.schemas import (
    Answer,
    FeedbackRequest,
    FeedbackState,
    StoredCompletion,
    VersionCard,
)

FEEDBACK_PREFIX = "fb-"


def store_completion(
    log: FeedbackLog,
    completion_id: str,
    request: EngineRequest,
    text: str,
    plan: Plan,
    model: str,
) -> bool:
    """Store a user's answered request under ``completion_id``; False when there is
    nothing to attribute it to (the base model with no user, or an empty answer)."""
    if plan.user is None or not text.strip():
        return False
    mine = [a.version for a in plan.adapters if a.source == "user"]
    done = log.record_completion(
        plan.user, list(request.prompt), text, version_number=mine[0] if mine else None
    )
    with log.registry.transaction() as session:
        session.add(ServedCompletionRow(id=completion_id, request_id=done.id, model=model))
    return True


def completion(registry: Registry, completion_id: str) -> StoredCompletion | None:
    with registry.session() as session:
        served = session.get(ServedCompletionRow, completion_id)
        if served is None:
            return None
        row = session.get(RequestRow, served.request_id)
        return StoredCompletion(
            id=served.id,
            created=int(served.created_at.timestamp()),
            model=served.model,
            user=row.user_id,
            messages=list(row.messages),
            response=row.response,
        )


def _served(session, completion_id: str, field: str) -> tuple[ServedCompletionRow, RequestRow]:
    served = session.get(ServedCompletionRow, completion_id)
    if served is None:
        raise ApiError(
            404,
            f"{field}: no stored completion {completion_id!r} (only answers of a user's model "
            "are stored; the base model's are not)",
            param=field,
        )
    return served, session.get(RequestRow, served.request_id)


def _answer(session, answer: Answer | None, field: str) -> tuple[str | None, int | None]:
    """(text, request id) of one side of a preference."""
    if answer is None:
        return None, None
    if (answer.completion_id is None) == (answer.text is None):
        raise FeedbackError(f"'{field}' needs exactly one of 'completion_id' or 'text'")
    if answer.text is not None:
        return answer.text, None
    _, row = _served(session, answer.completion_id, f"{field}.completion_id")
    return row.response, row.id


def feedback_event(registry: Registry, body: FeedbackRequest) -> FeedbackEvent:
    """The feedback log's event for ``body``; errors name the field and what to send."""
    with registry.session() as session:
        request_id, user = None, body.user
        if body.completion_id is not None:
            _, row = _served(session, body.completion_id, "completion_id")
            request_id = row.id
            if user is not None and user != row.user_id:
                raise FeedbackError(
                    f"'user' is {user!r} but completion {body.completion_id!r} belongs to "
                    f"{row.user_id!r}; leave 'user' out"
                )
            user = row.user_id
        if user is None:
            raise FeedbackError("send 'completion_id' (or 'user' for a note)")
        if body.key == "accept":
            return FeedbackEvent(user, "accept", request_id)
        if body.key == "thumbs":
            if body.score is None:
                raise FeedbackError("'score' is required for key 'thumbs': 1 (up), 0 or -1 (down)")
            return FeedbackEvent(user, "up" if body.score > 0 else "down", request_id)
        if body.key == "edit":
            return FeedbackEvent(user, "edit", request_id, text=body.correction)
        if body.key == "note":
            return FeedbackEvent(user, "note", request_id, text=body.comment)
        chosen, chosen_request = _answer(session, body.preferred, "preferred")
        rejected, rejected_request = _answer(session, body.non_preferred, "non_preferred")
        if chosen is None or rejected is None:
            raise FeedbackError("key 'preference' needs 'preferred' and 'non_preferred'")
        request_id = request_id or chosen_request or rejected_request
        return FeedbackEvent(user, "pair", request_id, chosen=chosen, rejected=rejected)


def feedback_number(feedback_id: str) -> int:
    number = feedback_id.removeprefix(FEEDBACK_PREFIX)
    if not (number.isascii() and number.isdigit()) or len(number) > 18:  # not '²'
        raise ApiError(404, f"no feedback {feedback_id!r} (ids look like 'fb-12')", param="id")
    return int(number)


def feedback_state(registry: Registry, number: int) -> FeedbackState | None:
    """Where event ``number`` stands: pending, trained into version N (promoted or a
    refused candidate, with the gate's verdict), held out, skipped or rejected."""
    with registry.session() as session:
        row = session.get(FeedbackEventRow, number)
        if row is None:
            return None
        served = (
            session.scalar(
                select(ServedCompletionRow.id).where(
                    ServedCompletionRow.request_id == row.request_id
                )
            )
            if row.request_id is not None
            else None
        )
        version = (
            session.get(AdapterVersionRow, row.consumed_by_version_id)
            if row.consumed_by_version_id is not None
            else None
        )
        if row.state == PENDING:
            state = "pending"
        elif row.state == CONSUMED:
            state = row.outcome if row.outcome in ("trained", "held-out") else "skipped"
        else:
            state = "rejected"
        return FeedbackState(
            id=f"{FEEDBACK_PREFIX}{row.id}",
            user=row.user_id,
            kind=row.kind,
            completion_id=served,
            state=state,
            detail=row.outcome,
            version=version.number if version else None,
            version_status=version.status if version else None,
            version_reason=version.status_reason if version else None,
        )


def version_card(version: VersionInfo) -> VersionCard:
    return VersionCard(
        number=version.number,
        status=version.status,
        reason=version.status_reason,
        parent=version.parent_number,
        method=version.method,
        created=int(version.created_at.timestamp()),
        sha256=version.blob_sha256,
        metrics=version.metrics,
    )
