"""Prometheus metrics of one server, on its own registry (no process-global collectors)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Fine below 100 ms, where a CPU classifier's latency lives, so p50/p95/p99 interpolate well.
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
                   0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("medops_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=self.registry)
        self.errors = Counter("medops_errors", "Error answers (4xx and 5xx) by route and type",
                              ["route", "type"], registry=self.registry)
        self.latency = Histogram("medops_request_seconds", "Request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("medops_batch_size", "Images per forward pass",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.images = Counter("medops_images", "Images predicted", registry=self.registry)
        self.live_version = Gauge("medops_model_version", "The model version being served",
                                  ["model"], registry=self.registry)
        self.swaps = Counter("medops_model_swaps", "Times a new model version went live",
                             registry=self.registry)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.images.inc(size)

    def set_live(self, model: str, version: str) -> None:
        self.live_version.labels(model=model).set(float(version))
        self.swaps.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
