"""Prometheus metrics of one server (own registry: two servers in one process, as in the
tests, do not share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("adaptkit_queue_depth", "requests waiting to join", registry=r)
        self.batch_size = Gauge("adaptkit_batch_size", "rows in the decoding batch", registry=r)
        self.batch_rows = Histogram(
            "adaptkit_batch_rows",
            "rows per decode step",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.decode_threads = Gauge(
            "adaptkit_decode_threads", "torch threads decoding uses now", registry=r
        )
        self.output_tokens = Counter("adaptkit_output_tokens", "tokens generated", registry=r)
        self.requests = Counter(
            "adaptkit_requests", "completions answered", ["outcome"], registry=r
        )
        self.ttft = Histogram(
            "adaptkit_time_to_first_token_seconds",
            "queued to first token",
            buckets=_LATENCY,
            registry=r,
        )
        self.latency = Histogram(
            "adaptkit_request_seconds", "queued to last token", buckets=_LATENCY, registry=r
        )
        self.cache_hits = Gauge("adaptkit_adapter_cache_hits", "bank RAM tier hits", registry=r)
        self.cache_loads = Gauge(
            "adaptkit_adapter_cache_loads", "adapters loaded from blobs", registry=r
        )
        self.feedback_pending = Gauge(
            "adaptkit_feedback_pending", "feedback events not yet trained on", registry=r
        )
        self.update_seconds = Histogram(
            "adaptkit_update_seconds", "one online update", buckets=_LATENCY, registry=r
        )
        self.feedback_to_version = Histogram(
            "adaptkit_feedback_to_version_seconds",
            "feedback committed to the version trained on it published",
            buckets=_LATENCY,
            registry=r,
        )
        self.update_stage = Histogram(
            "adaptkit_update_stage_seconds",
            "one online update by stage: wait (oldest event committed to the update's "
            "start), select, warm_start, train, gate, publish",
            ["stage"],
            buckets=_LATENCY,
            registry=r,
        )
        self.versions = Counter(
            "adaptkit_versions", "online updates by verdict", ["verdict"], registry=r
        )
