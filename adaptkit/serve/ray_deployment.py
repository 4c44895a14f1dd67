"""adaptkit's server as a Ray Serve deployment: users stick to the replica that holds
their adapter, and each replica still batches many users per forward.

Every replica runs the whole ``adaptkit serve`` app (its continuous-batching scheduler,
completion store and feedback endpoints) over one shared registry. Ray's model
multiplexing picks the replica: a request carrying the header
``serve_multiplexed_model_id: alice`` goes to a replica that already holds alice's
adapter in its RAM tier when one does. ``@serve.batch`` is deliberately not used: it
splits batches per multiplexed model, while a replica's scheduler mixes users in one
forward.

Run it with Ray's CLI (``args`` become the builder's keyword arguments)::

    serve run adaptkit.serve.ray_deployment:app_builder home=/srv/adaptkit replicas=2 \
        db=postgresql+psycopg://adaptkit@db/adaptkit blobs=s3://adapters/prod

and send OpenAI requests to Ray's proxy with the user in both places::

    client.chat.completions.create(
        model="smollm2-135m-instruct:alice", messages=[...],
        extra_headers={"serve_multiplexed_model_id": "alice"})

Each response says which replica answered (``x-adaptkit-replica``) and whether the
user was already held there (``x-adaptkit-resident``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import ray
from ray import serve
from ray.serve import Application
from starlette.requests import Request

from adaptkit.base_model import DEFAULT_BASE
from adaptkit.kit import AdaptKit
from adaptkit.serve.app import create_app
from adaptkit.serve.server import ServeConfig, Server

REPLICA_HEADER = "x-adaptkit-replica"
RESIDENT_HEADER = "x-adaptkit-resident"


@serve.deployment
@serve.ingress()
class AdaptkitReplica:
    """One replica: an ``AdaptKit`` (its long-lived engine) behind the server app."""

    def __init__(
        self,
        home: str,
        base: str = DEFAULT_BASE,
        max_batch: int = 32,
        workers: int = 0,
        db: str | None = None,
        blobs: str | None = None,
    ) -> None:
        # db / blobs: the registry every replica shares (None: $ADAPTKIT_DB /
        # $ADAPTKIT_BLOBS of the replica's process, else the home's own).
        self.kit = AdaptKit(home, base=base, db=db, blobs=blobs)
        # Ray's proxy is the front door (bind, auth at the proxy or gateway); the app
        # behind it is reached only through Ray.
        # torch's threads follow the CPUs Ray gave this replica, not the machine's cores.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        config = ServeConfig(
            no_auth=True, max_batch=max_batch, workers=workers, threads=max(1, round(cpus))
        )
        self.server = Server(self.kit, config)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.first_sights: Counter[str] = Counter()

    @serve.multiplexed(max_num_models_per_replica=1024)
    async def hold(self, user: str) -> str:
        """Called by Ray when ``user`` is routed here without being held: the user's
        adapter then loads into this replica's RAM tier on its first request."""
        self.first_sights[user] += 1
        return user

    def __serve_build_asgi_app__(self) -> Any:
        app = create_app(self.server)

        @app.middleware("http")
        async def affinity(request: Request, call_next):
            user = serve.get_multiplexed_model_id()
            resident = None
            if user:
                before = self.first_sights[user]
                await self.hold(user)
                resident = self.first_sights[user] == before
            response = await call_next(request)
            response.headers[REPLICA_HEADER] = self.replica
            if resident is not None:
                response.headers[RESIDENT_HEADER] = "1" if resident else "0"
            return response

        return app

    def __del__(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.close()
            self.kit.close()


def app_builder(args: dict[str, str]) -> Application:
    """``serve run adaptkit.serve.ray_deployment:app_builder home=DIR [base=NAME]
    [replicas=2] [max_batch=32] [workers=0] [db=URL] [blobs=URL]``."""
    known = {"home", "base", "replicas", "max_batch", "workers", "db", "blobs"}
    unknown = sorted(set(args) - known)
    if unknown or "home" not in args:
        raise ValueError(
            f"app_builder arguments: home=DIR is required; known: {', '.join(sorted(known))}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    replicas = int(args.get("replicas", 2))
    return AdaptkitReplica.options(num_replicas=replicas).bind(
        args["home"],
        args.get("base", DEFAULT_BASE),
        int(args.get("max_batch", 32)),
        int(args.get("workers", 0)),
        args.get("db"),
        args.get("blobs"),
    )
