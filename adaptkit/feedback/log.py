"""The durable feedback log: requests and feedback events, in the registry's database.

``record`` validates an event, writes it and commits it (SQLite WAL with
``synchronous=FULL``) before returning: a returned id is an acknowledged event,
and an acknowledged event survives any crash. Training only reads the log; an
event leaves the ``pending`` state only in the transaction that records what
came of it (the version trained on it, or a rejection with its reason).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adaptkit.errors import UnknownUserError
from adaptkit.feedback.events import Completion, EventBatch, FeedbackError, FeedbackEvent
from adaptkit.interactions import message_problems, text_problem
from adaptkit.prompting import as_messages
from adaptkit.registry import (
    CONSUMED,
    PENDING,
    REJECTED,
    FeedbackEventRow,
    Registry,
    RequestRow,
    UserRow,
)
from adaptkit.user_ids import validate_user_id


def _completion(row: RequestRow) -> Completion:
    return Completion(
        id=row.id,
        user_id=row.user_id,
        messages=tuple(dict(m) for m in row.messages),
        response=row.response,
        version_number=row.version_number,
    )


def _event(row: FeedbackEventRow) -> FeedbackEvent:
    payload = row.payload or {}
    return FeedbackEvent(
        user_id=row.user_id,
        kind=row.kind,
        request_id=row.request_id,
        text=payload.get("text"),
        chosen=payload.get("chosen"),
        rejected=payload.get("rejected"),
        id=row.id,
        created_at=row.created_at,
        state=row.state,
        outcome=row.outcome,
    )


class FeedbackLog:
    """Requests and feedback of every user, stored next to their adapter versions."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry  # the feedback rows live in the registry's database

    # -- writing (each call is one committed transaction) ----------------------------

    def record_completion(
        self,
        user_id: str,
        messages: str | Sequence[dict],
        response: str,
        *,
        version_number: int | None = None,
    ) -> Completion:
        """Log an answered request (a served request makes its user known)."""
        validate_user_id(user_id)
        # Checked whole before storing: a stored request without content or with an
        # unknown role would fail every later update of this user.
        conversation = as_messages(messages)
        problems = [f"{name} {problem}" for name, problem in message_problems(conversation)]
        if (problem := text_problem(response)) is not None:
            problems.append(f"the response {problem}")
        if problems:
            raise FeedbackError(
                f"request of user {user_id!r}: {'; '.join(problems)}; nothing was recorded"
            )
        self.registry.ensure_user(user_id)
        with self.registry.transaction() as session:
            row = RequestRow(
                user_id=user_id,
                messages=conversation,
                response=response,
                version_number=version_number,
            )
            session.add(row)
            session.flush()
            return _completion(row)

    def record(self, event: FeedbackEvent, *, idempotency_key: str | None = None) -> FeedbackEvent:
        """Validate ``event``, commit it, and return it with its id (= acknowledged).

        ``idempotency_key``: a retry of a call that carried the same key (for this user)
        records nothing and returns the event the first call recorded."""
        validate_user_id(event.user_id)
        if idempotency_key is not None:
            if (first := self._by_idempotency_key(event.user_id, idempotency_key)) is not None:
                return first
            try:
                return self._insert(event, idempotency_key)
            except IntegrityError:
                # A concurrent retry committed first: its event is the one.
                first = self._by_idempotency_key(event.user_id, idempotency_key)
                if first is None:
                    raise
                return first
        return self._insert(event, None)

    def _by_idempotency_key(self, user_id: str, key: str) -> FeedbackEvent | None:
        with self.registry.session() as session:
            row = session.scalar(
                select(FeedbackEventRow).where(
                    FeedbackEventRow.user_id == user_id,
                    FeedbackEventRow.idempotency_key == key,
                )
            )
            return _event(row) if row is not None else None

    def _insert(self, event: FeedbackEvent, idempotency_key: str | None) -> FeedbackEvent:
        with self.registry.transaction() as session:
            if session.get(UserRow, event.user_id) is None:
                raise UnknownUserError(
                    f"feedback for unknown user {event.user_id!r}: record a request of this "
                    "user first; nothing was recorded"
                )
            request_row = (
                session.get(RequestRow, event.request_id) if event.request_id is not None else None
            )
            event.validate(_completion(request_row) if request_row else None)
            row = FeedbackEventRow(
                user_id=event.user_id,
                request_id=event.request_id,
                kind=event.kind,
                payload=event.payload(),
                state=PENDING,
                idempotency_key=idempotency_key,
            )
            session.add(row)
            session.flush()
            stored = _event(row)
        return stored

    def consume_in(self, session: Session, outcomes: dict[int, str], version_id: int) -> None:
        """Mark events consumed by version ``version_id`` inside the caller's transaction."""
        for row in self._rows(session, outcomes):
            row.state = CONSUMED
            row.outcome = outcomes[row.id]
            row.consumed_by_version_id = version_id

    def settle(self, outcomes: dict[int, str], *, rejected: bool) -> None:
        """Record what came of events that produced no version (skipped, or rejected)."""
        with self.registry.transaction() as session:
            for row in self._rows(session, outcomes):
                row.state = REJECTED if rejected else CONSUMED
                row.outcome = outcomes[row.id]

    @staticmethod
    def _rows(session: Session, outcomes: dict[int, str]) -> list[FeedbackEventRow]:
        rows = session.scalars(
            select(FeedbackEventRow).where(FeedbackEventRow.id.in_(list(outcomes)))
        ).all()
        missing = set(outcomes) - {row.id for row in rows}
        if missing:
            raise FeedbackError(f"feedback events {sorted(missing)} are not in the log")
        not_pending = [row.id for row in rows if row.state != PENDING]
        if not_pending:
            # Two trainers on one user, or a replayed batch: never count an event twice.
            raise FeedbackError(f"feedback events {not_pending} were already settled")
        return list(rows)

    # -- reading ---------------------------------------------------------------------

    def request(self, request_id: int) -> Completion | None:
        with self.registry.session() as session:
            row = session.get(RequestRow, request_id)
            return _completion(row) if row else None

    def events(self, user_id: str, *, states: Iterable[str] | None = None) -> list[FeedbackEvent]:
        """The user's events, oldest first (all states unless ``states`` is given)."""
        query = select(FeedbackEventRow).where(FeedbackEventRow.user_id == user_id)
        if states is not None:
            query = query.where(FeedbackEventRow.state.in_(list(states)))
        with self.registry.session() as session:
            return [_event(row) for row in session.scalars(query.order_by(FeedbackEventRow.id))]

    def users_with_pending(self) -> list[str]:
        with self.registry.session() as session:
            return list(
                session.scalars(
                    select(FeedbackEventRow.user_id)
                    .where(FeedbackEventRow.state == PENDING)
                    .distinct()
                    .order_by(FeedbackEventRow.user_id)
                )
            )

    def batch(self, user_id: str, events: Sequence[FeedbackEvent]) -> EventBatch:
        """Events with the requests they refer to."""
        wanted = {event.request_id for event in events if event.request_id is not None}
        with self.registry.session() as session:
            rows = session.scalars(select(RequestRow).where(RequestRow.id.in_(wanted))).all()
            requests = {row.id: _completion(row) for row in rows}
        return EventBatch(user_id, tuple(events), requests)

    def pending(self, user_id: str, *, limit: int | None = None) -> EventBatch:
        """The user's pending events, oldest first: everything that arrived so far."""
        events = self.events(user_id, states=[PENDING])
        return self.batch(user_id, events[:limit] if limit else events)

    def trained(self, user_id: str) -> EventBatch:
        """Events already trained on (the replay pool)."""
        events = [e for e in self.events(user_id, states=[CONSUMED]) if e.outcome == "trained"]
        return self.batch(user_id, events)

    def held_out(self, user_id: str) -> EventBatch:
        """Events kept back from training to check that updates help this user."""
        events = [e for e in self.events(user_id, states=[CONSUMED]) if e.outcome == "held-out"]
        return self.batch(user_id, events)

    def notes(self, user_id: str) -> list[str]:
        """Every note the user stated, oldest first, whatever their state."""
        return [e.text for e in self.events(user_id) if e.kind == "note" and e.text]
