"""The OpenAI-compatible server that learns while it serves (``adaptkit serve``).

    with AdaptKit(home) as kit, Server(kit, ServeConfig(port=8000)) as server:
        run(server)

Room by room: ``naming`` (``<base>:<user>@<N>``), ``schemas`` (bodies), ``scheduler``
(continuous batching over the engine's decode session), ``records`` (completions and
feedback in the registry's database), ``auth`` (hashed API keys), ``learner`` (the
online worker beside the server), ``metrics`` (Prometheus), ``app`` (the routes).
"""

from adaptkit.serve.app import create_app
from adaptkit.serve.auth import SCOPES, ApiKey, ApiKeys
from adaptkit.serve.naming import ModelRef, answered_by, parse_model
from adaptkit.serve.scheduler import QueueFullError, Scheduler
from adaptkit.serve.server import ServeConfig, Server, run

__all__ = [
    "SCOPES",
    "ApiKey",
    "ApiKeys",
    "ModelRef",
    "QueueFullError",
    "Scheduler",
    "ServeConfig",
    "Server",
    "answered_by",
    "create_app",
    "parse_model",
    "run",
]
