"""Gateway mode: adaptkit's API, keys, completion store, feedback and online learning in
front of another OpenAI-compatible engine that generates (vLLM in production).

``UpstreamScheduler`` stands where the local ``Scheduler`` stands (the same ``submit``
of a ``Job``, the same ``Started`` / ``Delta`` / ``Finished`` / ``Failed`` events). Each
request is planned by adaptkit's router over the registry — so the user's *current*
version is adaptkit's answer, never the engine's cache — and forwarded under that
version's immutable name:

- ``kind="adaptkit"`` (another ``adaptkit serve``): ``<base>:<user>@<N>``;
- ``kind="vllm"``: ``<user>@v<N>``, which vLLM resolves through adaptkit's LoRA resolver
  plugin over the same registry (``docs/export.md``) the first time it meets the name.

An update therefore reaches the engine as a new name on the next request. Shared-adapter
composition is not forwarded (the engine would need the shared library); such a request
is refused with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from adaptkit.errors import AdaptkitError, InputError
from adaptkit.export import versioned_name
from adaptkit.prompting import as_messages, encode_prompt
from adaptkit.registry import Registry, VersionInfo
from adaptkit.router import Plan, Router
from adaptkit.serve.errors import ApiError
from adaptkit.serve.metrics import ServeMetrics
from adaptkit.serve.scheduler import Delta, Failed, Finished, Job, QueueFullError, Started

log = logging.getLogger(__name__)

UpstreamKind = Literal["adaptkit", "vllm"]
UPSTREAM_KINDS = ("adaptkit", "vllm")


def upstream_failed(message: str) -> ApiError:
    """The engine failed (or could not be reached): a 502, with its words."""
    return ApiError(502, f"the upstream engine failed: {message}", code="upstream_error")


class RegistryCatalog:
    """What the router needs, from the registry alone (a gateway holds no adapters)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def active_version(self, user: str) -> VersionInfo | None:
        return self.registry.active_version(user)

    def version(self, user: str, number: int) -> VersionInfo:
        return self.registry.version(user, number)

    def shared_path(self, name: str) -> Path:
        raise InputError(
            f"shared adapter {name!r}: this server forwards generation to an upstream "
            "engine, which serves users' adapters only; send the request without compose"
        )


@dataclass(frozen=True)
class Upstream:
    url: str  # the engine's root, e.g. http://10.0.0.5:8000 (its API is under /v1)
    kind: UpstreamKind
    base: str  # the name the engine serves the base model under
    api_key: str | None = None

    def model_name(self, plan: Plan) -> str:
        """The immutable name of what ``plan`` asks for, in the engine's convention."""
        users = [a for a in plan.adapters if a.source == "user"]
        if not users:
            return self.base
        user, number = users[0].name, users[0].version
        if self.kind == "vllm":
            return versioned_name(user, number)
        return f"{self.base}:{user}@{number}"


class UpstreamScheduler:
    """Forwards each job to the upstream engine as a streamed chat completion."""

    def __init__(
        self,
        upstream: Upstream,
        router: Router,
        tokenizer,
        metrics: ServeMetrics,
        *,
        max_queue: int = 256,
        timeout_s: float = 300.0,
    ) -> None:
        self.upstream = upstream
        self.router = router
        self.tokenizer = tokenizer  # counts prompt tokens as the engine will
        self.metrics = metrics
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self._tasks: set[asyncio.Task] = set()
        self.alive = False

    def start(self) -> UpstreamScheduler:
        self.alive = True
        return self

    def stop(self) -> None:
        for task in list(self._tasks):
            task.get_loop().call_soon_threadsafe(task.cancel)
        self.alive = False

    def submit(self, job: Job) -> None:
        """Plan ``job`` and start forwarding it (called on the event loop)."""
        if len(self._tasks) >= self.max_queue:
            raise QueueFullError(len(self._tasks), retry_after=1)
        try:
            plan = self.router.plan(job.request)
        except AdaptkitError as error:
            job.emit(Failed(error))
            return
        task = job.loop.create_task(self._forward(job, plan))
        self._tasks.add(task)
        self.metrics.queue_depth.set(len(self._tasks))
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self.metrics.queue_depth.set(len(self._tasks))

    def _body(self, job: Job, plan: Plan) -> dict:
        sampling = job.sampling
        body = {
            "model": self.upstream.model_name(plan),
            "messages": as_messages(job.request.prompt),
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if job.stops:
            body["stop"] = job.stops
        return body

    async def _forward(self, job: Job, plan: Plan) -> None:
        headers = {}
        if self.upstream.api_key:
            headers["Authorization"] = f"Bearer {self.upstream.api_key}"
        prompt_tokens = len(encode_prompt(self.tokenizer, as_messages(job.request.prompt)))
        try:
            async with (
                httpx.AsyncClient(timeout=self.timeout_s) as client,
                client.stream(
                    "POST",
                    f"{self.upstream.url.rstrip('/')}/v1/chat/completions",
                    json=self._body(job, plan),
                    headers=headers,
                ) as response,
            ):
                if response.status_code != 200:
                    await response.aread()
                    job.emit(Failed(_upstream_error(response)))
                    return
                job.emit(Started(plan, prompt_tokens))
                await self._relay(job, response)
        except httpx.HTTPError as error:
            job.emit(Failed(upstream_failed(f"{type(error).__name__}: {error}")))
        except asyncio.CancelledError:
            job.emit(Failed(RuntimeError("the server is shutting down")))
            raise

    async def _relay(self, job: Job, response: httpx.Response) -> None:
        """Pass the engine's deltas on; closing the stream early (the client left) makes
        the engine retire the row."""
        text, reason, completion_tokens = "", "stop", 0
        async for line in response.aiter_lines():
            if job.cancelled:
                return
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                job.emit(Failed(upstream_failed(json.dumps(chunk["error"]))))
                return
            if chunk.get("usage"):
                completion_tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content") or ""
                if piece:
                    text += piece
                    job.emit(Delta(piece))
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
        job.emit(Finished(text, reason, completion_tokens))
        self.metrics.output_tokens.inc(completion_tokens)
        self.metrics.requests.labels("ok").inc()


def _upstream_error(response: httpx.Response) -> Exception:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    if response.status_code in (400, 404, 422):
        # The engine refused what we sent (e.g. it cannot load the version): say so as
        # the client's error, with the engine's words.
        return InputError(f"the upstream engine refused the request: {message}")
    return upstream_failed(f"{response.status_code}: {message}")
