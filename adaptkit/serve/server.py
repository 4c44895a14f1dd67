"""``Server``: what one ``adaptkit serve`` runs: the kit's long-lived engine behind the
scheduler's thread, the online learner on its own base copy, the API keys, the metrics.

    with AdaptKit(home) as kit, Server(kit, ServeConfig()) as server:
        run(server)          # uvicorn on server.config.host:port until Ctrl-C
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field

import torch
from sqlalchemy import text
from transformers import AutoTokenizer

from adaptkit.base_model import CATALOGUE
from adaptkit.errors import InputError
from adaptkit.export import converted_base_dir
from adaptkit.feedback import FeedbackLog
from adaptkit.gate import ProbeSuite
from adaptkit.kit import AdaptKit
from adaptkit.online import OnlineConfig
from adaptkit.registry import PENDING, FeedbackEventRow
from adaptkit.router import Router
from adaptkit.serve.auth import ApiKeys
from adaptkit.serve.learner import Learner, LearningBudget, Updates
from adaptkit.serve.metrics import ServeMetrics
from adaptkit.serve.scheduler import DecodeThreads, Scheduler
from adaptkit.serve.upstream import (
    UPSTREAM_KINDS,
    RegistryCatalog,
    Upstream,
    UpstreamScheduler,
)


@dataclass(frozen=True)
class ServeConfig:
    """Settings of ``adaptkit serve``. Field names are the CLI flags (``--max-batch`` ...)."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=8000, metadata={"help": "port to bind"})
    max_batch: int = field(default=32, metadata={"help": "rows decoded together at most"})
    max_queue: int = field(
        default=256, metadata={"help": "requests waiting to join at most; then 429"}
    )
    workers: int = field(
        default=1, metadata={"help": "online trainers beside the server (0: do not learn)"}
    )
    max_body_bytes: int = field(default=1_000_000, metadata={"help": "largest request body"})
    no_auth: bool = field(
        default=False, metadata={"help": "serve without API keys (loopback --host only)"}
    )
    poll_seconds: float = field(
        default=1.0, metadata={"help": "how often the trainer looks for feedback from elsewhere"}
    )
    upstream: str = field(
        default="",
        metadata={
            "help": "forward generation to this OpenAI-compatible engine (http://HOST:PORT); "
            "adaptkit keeps its API, keys, completion store, feedback and learning"
        },
    )
    upstream_kind: str = field(
        default="adaptkit",
        metadata={
            "help": "the upstream's adapter names: adaptkit (<base>:<user>@<N>) or vllm "
            "(<user>@v<N>, resolved by adaptkit's vLLM plugin)"
        },
    )
    upstream_model: str = field(
        default="",
        metadata={
            "help": "the base model's name on the upstream (default: --base for adaptkit, "
            "its hub id for vllm)"
        },
    )
    learn_share: float = field(
        default=0.2,
        metadata={
            "help": "the share of the time the online trainer may compute while the batch "
            "is at least half full (1: no limit; below, it always may)"
        },
    )
    threads: int = field(
        default=0,
        metadata={
            "help": "torch threads of decoding and of training each (0: decoding takes every "
            "core while no update runs, and the cores are split while one does)"
        },
    )

    def __post_init__(self) -> None:
        problems = []
        for name, least in (
            ("max_batch", 1),
            ("max_queue", 1),
            ("max_body_bytes", 1024),
            ("threads", 0),
        ):
            if getattr(self, name) < least:
                flag = "--" + name.replace("_", "-")
                problems.append(f"{flag} must be >= {least}, got {getattr(self, name)}")
        if self.workers not in (0, 1):
            problems.append(f"--workers must be 0 or 1 (one trainer thread), got {self.workers}")
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must be in 0..65535, got {self.port}")
        if self.upstream and not self.upstream.startswith(("http://", "https://")):
            problems.append(f"--upstream must be an http:// or https:// URL, got {self.upstream!r}")
        if self.upstream_kind not in UPSTREAM_KINDS:
            problems.append(
                f"--upstream-kind must be one of {', '.join(UPSTREAM_KINDS)}, "
                f"got {self.upstream_kind!r}"
            )
        if not 0.0 < self.learn_share <= 1.0:
            problems.append(f"--learn-share must be in (0, 1], got {self.learn_share}")
        if self.poll_seconds <= 0:
            problems.append(f"--poll-seconds must be > 0, got {self.poll_seconds}")
        if self.no_auth and not _loopback(self.host):
            problems.append(
                f"--no-auth serves anyone who can reach --host {self.host!r}: it is allowed on "
                "loopback only (127.0.0.1, ::1, localhost); make keys with `adaptkit keys create`"
            )
        if problems:
            raise InputError("; ".join(problems))


def thread_split(config: ServeConfig, cores: int | None = None) -> tuple[DecodeThreads, int]:
    """Decoding's torch threads (alone / while an update runs) and the trainer's.

    Each side runs ops in its own thread with its own thread team: two teams spinning
    at barriers on the same cores cost far more than they share, so while an update
    runs the cores are split; while none runs decoding has them all. ``--threads N``
    fixes N for both sides.
    """
    if config.threads:
        return DecodeThreads(config.threads, config.threads), config.threads
    cores = cores or os.cpu_count() or 1
    train = max(1, cores // 2) if config.workers else 0
    return DecodeThreads(cores, max(1, cores - train)), train


def _never() -> bool:
    return False


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    def __init__(
        self,
        kit: AdaptKit,
        config: ServeConfig,
        *,
        online: OnlineConfig | None = None,
        probes: ProbeSuite | None = None,
    ) -> None:
        """``online``, ``probes``: the online trainer's settings and gate probes."""
        self.kit = kit
        self.config = config
        self.registry = kit.registry
        self.base_name = kit.base_name
        self.metrics = ServeMetrics()
        self.feedback = FeedbackLog(kit.registry)
        self.keys = None if config.no_auth else ApiKeys(kit.registry)
        decode, train = thread_split(config)
        # The default for threads that never set their own (set per thread below).
        torch.set_num_threads(decode.shared)
        self.learner = None
        self.updates = Updates()
        self.scheduler = (
            _forwarder(kit, config, self.metrics)
            if config.upstream
            else Scheduler(
                kit.engine,
                self.metrics,
                max_batch=config.max_batch,
                max_queue=config.max_queue,
                threads=decode,
                training=lambda: self.learner is not None and self.learner.training,
            )
        ).start()
        if config.workers:
            # A forwarding server decodes elsewhere: its trainer takes no cores from it.
            busy = self.scheduler.busy if isinstance(self.scheduler, Scheduler) else _never
            self.learner = Learner(
                kit.registry,
                kit.home,
                kit.base_name,
                self.metrics,
                quant=kit.quant,
                config=online,
                probes=probes,
                poll_seconds=config.poll_seconds,
                threads=train,
                budget=LearningBudget(config.learn_share, busy),
                on_update=self.updates.notify,
            ).start()

    def notify(self, user_id: str) -> None:
        if self.learner is not None:
            self.learner.notify(user_id)

    def readiness(self) -> dict[str, str]:
        checks = {"model": "loaded" if self.scheduler.alive else "stopped"}
        try:
            with self.registry.session() as session:
                session.execute(text("SELECT 1"))
            checks["registry"] = "reachable"
        except Exception as error:  # readiness reports; it does not raise
            checks["registry"] = f"unreachable: {type(error).__name__}"
        if self.learner is None:
            checks["learner"] = "off (--workers 0)"
        elif self.learner.error:
            checks["learner"] = f"failed: {self.learner.error}"
        else:
            checks["learner"] = "running" if self.learner.ready else "loading"
        return checks

    def refresh_metrics(self) -> None:
        with self.registry.session() as session:
            pending = session.query(FeedbackEventRow).filter_by(state=PENDING).count()
        self.metrics.feedback_pending.set(pending)

    def close(self) -> None:
        self.scheduler.stop()
        if self.learner is not None:
            self.learner.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _forwarder(kit: AdaptKit, config: ServeConfig, metrics: ServeMetrics) -> UpstreamScheduler:
    """Gateway mode: no local engine; the router plans over the registry and the
    tokenizer counts prompt tokens as the upstream's own copy of the base will."""
    entry = CATALOGUE.get(kit.base_name)
    default = entry.hf_id if config.upstream_kind == "vllm" and entry else kit.base_name
    upstream = Upstream(config.upstream, config.upstream_kind, config.upstream_model or default)
    tokenizer = AutoTokenizer.from_pretrained(converted_base_dir(kit.base_name, kit.home))
    router = Router(RegistryCatalog(kit.registry))
    return UpstreamScheduler(upstream, router, tokenizer, metrics, max_queue=config.max_queue)


def run(server: Server) -> None:
    """Serve ``server`` with uvicorn until interrupted (then close it)."""
    import uvicorn

    from adaptkit.serve.app import create_app

    host, port = server.config.host, server.config.port
    # Bind first, so the URL printed is the real one (--port 0 picks a free port).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise InputError(f"cannot listen on --host {host} --port {port}: {error}") from None
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"adaptkit: serving {server.base_name} at http://{shown}:{port}/v1", flush=True)
    config = uvicorn.Config(create_app(server), log_level="warning", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
