"""The FastAPI app: OpenAI's endpoints, feedback, admin, health and metrics.

``create_app(server)`` builds the routes over a running ``Server`` (engine,
scheduler, learner, keys); handlers only translate HTTP to those objects and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from adaptkit.bank import Sampling
from adaptkit.router import Request as EngineRequest
from adaptkit.serve import records
from adaptkit.serve.auth import ApiKey
from adaptkit.serve.errors import ApiError, as_api_error, error_response, install
from adaptkit.serve.naming import answered_by, parse_model
from adaptkit.serve.scheduler import Delta, Failed, Finished, Job, Started
from adaptkit.serve.schemas import (
    ActivateRequest,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    ErasureCard,
    ErrorBody,
    FeedbackRequest,
    FeedbackState,
    ModelCard,
    ModelList,
    Route,
    StoredCompletion,
    TextChoice,
    TextCompletion,
    Usage,
    UserCard,
    VersionCard,
)
from adaptkit.serve.server import Server

MAX_FEEDBACK_WAIT_S = 60.0  # GET /v1/feedback/{id}?wait=: longer holds belong to a retry loop

ERRORS = {
    status: {"model": ErrorBody, "description": why}
    for status, why in (
        (400, "bad request"),
        (401, "no or unknown API key"),
        (403, "the key does not reach this"),
        (404, "not found"),
        (413, "body too large"),
        (422, "invalid field"),
        (429, "queue full; see Retry-After"),
    )
}


def principal(
    http: Request, authorization: Annotated[str | None, Header()] = None
) -> ApiKey | None:
    """The request's key (None: the server runs with --no-auth)."""
    keys = http.app.state.server.keys
    if keys is None:
        return None
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "missing API key: send 'Authorization: Bearer <key>' (make one with "
            "`adaptkit keys create --scope app`)",
            code="missing_api_key",
        )
    key = keys.check(token.strip())
    if key is None:
        raise ApiError(401, "unknown or revoked API key", code="invalid_api_key")
    return key


Principal = Annotated[ApiKey | None, Depends(principal)]


def admin(key: Principal) -> ApiKey | None:
    if key is not None and key.scope != "admin":
        raise ApiError(403, "this endpoint needs an admin key", code="admin_only")
    return key


Admin = Annotated[ApiKey | None, Depends(admin)]


def reach(key: ApiKey | None, user: str | None) -> None:
    if key is not None and user is not None and not key.reaches(user):
        raise ApiError(
            403,
            f"this key reaches users matching {key.users!r}, not {user!r}",
            code="user_not_allowed",
        )


def create_app(server: Server) -> FastAPI:
    app = FastAPI(
        title="adaptkit",
        version="0.1.0",
        description="OpenAI-compatible server of per-user adapters that learns from feedback",
        responses=ERRORS,
    )
    install(app)
    app.add_middleware(BodyLimit, limit=server.config.max_body_bytes)
    app.state.server = server

    # -- generation --------------------------------------------------------------------

    async def run(
        body: ChatCompletionRequest | CompletionRequest,
        messages: list[dict[str, str]],
        key: ApiKey | None,
        http: Request,
    ):
        ref = parse_model(body.model, server.base_name)
        reach(key, ref.user)
        job = Job(
            EngineRequest(
                messages,
                user=ref.user,
                version=ref.version,
                compose=body.compose,
                user_weight=body.user_weight,
            ),
            Sampling(
                body.token_limit(),
                body.temperature,
                body.top_p,
                body.seed,
                repetition=body.repetition(),
            ),
            body.stops(),
            asyncio.get_running_loop(),
        )
        server.scheduler.submit(job)
        first = await _next(job, http)
        if isinstance(first, Failed):
            raise as_api_error(first.error)
        return job, first, ref

    async def store(job: Job, started: Started, text: str, completion_id: str | None = None):
        """Store the answer under ``completion_id`` (new if None) and return the id."""
        completion_id = completion_id or f"chatcmpl-{uuid.uuid4().hex}"
        await run_in_threadpool(
            records.store_completion,
            server.feedback,
            completion_id,
            job.request,
            text,
            started.plan,
            answered_by(server.base_name, started.plan),
        )
        return completion_id

    @app.post("/v1/chat/completions", response_model=ChatCompletion)
    async def chat_completions(body: ChatCompletionRequest, key: Principal, http: Request):
        messages = [m.model_dump() for m in body.messages]
        if messages[-1]["role"] != "user":
            raise ApiError(
                400,
                "messages must end with the user's turn",
                code="invalid_request",
                param="messages",
            )
        job, started, _ = await run(body, messages, key, http)
        model = answered_by(server.base_name, started.plan)
        created = int(time.time())
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _chat_stream(job, started, model, created, store, usage),
                media_type="text/event-stream",
            )
        text, finished = await _collect(job, http)
        return ChatCompletion(
            id=await store(job, started, text),
            created=created,
            model=model,
            choices=[
                ChatChoice(
                    index=0,
                    message=AssistantMessage(content=text),
                    finish_reason=finished.finish_reason,
                )
            ],
            usage=_usage(started, finished),
            adaptkit=Route(**started.plan.to_dict()),
        )

    @app.post("/v1/completions", response_model=TextCompletion)
    async def completions(body: CompletionRequest, key: Principal, http: Request):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1 or not prompts[0]:
            raise ApiError(
                400, "prompt must be one non-empty string", code="invalid_request", param="prompt"
            )
        job, started, _ = await run(body, [{"role": "user", "content": prompts[0]}], key, http)
        model = answered_by(server.base_name, started.plan)
        created = int(time.time())
        if body.stream:
            return StreamingResponse(
                _text_stream(job, started, model, created, store),
                media_type="text/event-stream",
            )
        text, finished = await _collect(job, http)
        return TextCompletion(
            id=await store(job, started, text),
            created=created,
            model=model,
            choices=[TextChoice(index=0, text=text, finish_reason=finished.finish_reason)],
            usage=_usage(started, finished),
            adaptkit=Route(**started.plan.to_dict()),
        )

    @app.get("/v1/chat/completions/{completion_id}", response_model=StoredCompletion)
    async def stored_completion(completion_id: str, key: Principal):
        stored = await run_in_threadpool(records.completion, server.registry, completion_id)
        if stored is None or (key is not None and not key.reaches(stored.user)):
            raise ApiError(404, f"no stored completion {completion_id!r}", param="completion_id")
        return stored

    @app.get("/v1/models", response_model=ModelList)
    async def models(key: Principal):
        users = await run_in_threadpool(server.registry.users)
        now = int(time.time())
        cards = [ModelCard(id=server.base_name, created=now, owned_by="adaptkit")]
        cards += [
            ModelCard(
                id=f"{server.base_name}:{u.id}",
                created=int(u.created_at.timestamp()),
                owned_by=u.id,
            )
            for u in users
            if key is None or key.reaches(u.id)
        ]
        return ModelList(data=cards)

    # -- feedback ----------------------------------------------------------------------

    @app.post("/v1/feedback", status_code=202, response_model=FeedbackState)
    async def post_feedback(
        body: FeedbackRequest,
        key: Principal,
        idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
    ):
        event = await run_in_threadpool(records.feedback_event, server.registry, body)
        reach(key, event.user_id)
        stored = await run_in_threadpool(
            server.feedback.record, event, idempotency_key=body.idempotency_key or idempotency_key
        )
        server.notify(stored.user_id)
        return await run_in_threadpool(records.feedback_state, server.registry, stored.id)

    @app.get("/v1/feedback/{feedback_id}", response_model=FeedbackState)
    async def get_feedback(
        feedback_id: str,
        key: Principal,
        http: Request,
        wait: Annotated[float, Query(ge=0, le=MAX_FEEDBACK_WAIT_S)] = 0,
    ):
        """``wait``: while the event is pending, answer once it is not (or after ``wait``
        seconds, still pending): one request per event instead of a polling loop."""
        number = records.feedback_number(feedback_id)
        deadline = time.monotonic() + wait
        while True:
            learned = server.updates.since()  # before the read: an update in between wakes us
            state = await run_in_threadpool(records.feedback_state, server.registry, number)
            if state is None or (key is not None and not key.reaches(state.user)):
                raise ApiError(404, f"no feedback {feedback_id!r}", param="feedback_id")
            left = deadline - time.monotonic()
            if state.state != "pending" or left <= 0 or await http.is_disconnected():
                return state
            # Re-read at least every --poll-seconds: another process may train it.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(learned.wait(), min(left, server.config.poll_seconds))

    # -- admin -------------------------------------------------------------------------

    @app.get("/v1/admin/users", response_model=list[UserCard])
    async def admin_users(_key: Admin):
        users = await run_in_threadpool(server.registry.users)
        return [
            UserCard(id=u.id, active_version=u.active_version, versions=u.version_count)
            for u in users
        ]

    @app.get("/v1/admin/users/{user}/versions", response_model=list[VersionCard])
    async def admin_versions(user: str, _key: Admin):
        versions = await run_in_threadpool(server.registry.versions, user)
        return [records.version_card(v) for v in versions]

    @app.post("/v1/admin/users/{user}/activate", response_model=VersionCard)
    async def admin_activate(user: str, body: ActivateRequest, _key: Admin):
        version = await run_in_threadpool(server.registry.activate, user, body.version)
        return records.version_card(version)

    @app.delete("/v1/admin/users/{user}", response_model=ErasureCard)
    async def admin_erase(user: str, key: Admin):
        """Erase everything stored of ``user`` (versions, blobs, feedback, completions),
        audited under the admin key that asked (its prefix, never the key)."""
        actor = f"api-key:{key.prefix}" if key is not None else "serve --no-auth"
        report = await run_in_threadpool(server.registry.erase, user, actor=actor)
        return ErasureCard(
            user=report.user_id,
            actor=report.actor,
            versions=report.versions,
            feedback_events=report.feedback_events,
            requests=report.requests,
            audit_id=report.audit_id,
        )

    # -- health ------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=dict[str, str],
        responses={503: {"model": dict[str, str], "description": "not ready; says what"}},
    )
    async def readyz():
        checks = await run_in_threadpool(server.readiness)
        ready = checks["model"] == "loaded" and checks["registry"] == "reachable"
        return JSONResponse(checks, status_code=200 if ready else 503)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics():
        await run_in_threadpool(server.refresh_metrics)
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class BodyLimit:
    """413 for a body over ``limit`` bytes, declared (Content-Length) or streamed."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = ApiError(
            413,
            f"the body is over this server's limit of {self.limit} bytes (--max-body-bytes)",
            code="body_too_large",
        )
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            response = error_response(too_large.status, too_large.message, code=too_large.code)
            await response(scope, receive, send)
            return
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise too_large  # answered by the app's ApiError handler
            return message

        await self.app(scope, limited, send)


# -- helpers of the generation routes ---------------------------------------------------


async def _next(job: Job, http: Request):
    """The job's next event; marks it cancelled when the client has gone away."""
    while True:
        try:
            return await asyncio.wait_for(job.events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await http.is_disconnected():
                job.cancelled = True
                raise ApiError(400, "the client disconnected") from None


async def _collect(job: Job, http: Request) -> tuple[str, Finished]:
    while True:
        event = await _next(job, http)
        if isinstance(event, Finished):
            return event.text, event
        if isinstance(event, Failed):
            raise as_api_error(event.error)


def _usage(started: Started, finished: Finished) -> Usage:
    return Usage(
        prompt_tokens=started.prompt_tokens,
        completion_tokens=finished.completion_tokens,
        total_tokens=started.prompt_tokens + finished.completion_tokens,
    )


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def _events(job: Job) -> AsyncIterator[Delta | Finished | Failed]:
    """The job's events until it ends; a client that goes away cancels it."""
    try:
        while True:
            event = await job.events.get()
            yield event
            if isinstance(event, (Finished, Failed)):
                return
    finally:
        job.cancelled = True  # no-op once finished; retires the row when the client left


async def _chat_stream(job, started, model, created, store, usage) -> AsyncIterator[str]:
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"  # the answer is stored under it at the end

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        choices = (
            [{"index": 0, "delta": delta, "finish_reason": finish}] if delta is not None else []
        )
        return _sse(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
        )

    yield chunk({"role": "assistant", "content": ""})
    async for event in _events(job):
        if isinstance(event, Delta):
            yield chunk({"content": event.text})
        elif isinstance(event, Finished):
            await store(job, started, event.text, completion_id)
            yield chunk({}, event.finish_reason)
            if usage:  # OpenAI's stream_options.include_usage: a last chunk, no choices
                yield chunk(None, usage=_usage(started, event).model_dump())
        else:
            yield _sse({"error": _error_detail(event.error)})
    yield "data: [DONE]\n\n"


async def _text_stream(job, started, model, created, store) -> AsyncIterator[str]:
    completion_id = f"cmpl-{uuid.uuid4().hex}"  # readable at /v1/chat/completions/{id}

    def chunk(text: str, finish: str | None = None) -> str:
        return _sse(
            {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish}],
            }
        )

    async for event in _events(job):
        if isinstance(event, Delta):
            yield chunk(event.text)
        elif isinstance(event, Finished):
            await store(job, started, event.text, completion_id)
            yield chunk("", event.finish_reason)
        else:
            yield _sse({"error": _error_detail(event.error)})
    yield "data: [DONE]\n\n"


def _error_detail(error: Exception) -> dict:
    api = as_api_error(error)
    return {"message": api.message, "type": "server_error", "param": api.param, "code": api.code}
