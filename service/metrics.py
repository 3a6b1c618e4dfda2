"""Prometheus metrics, one registry per app (so tests can build several apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets from 0.25 ms to 5 s: the GPU path lives around 1 ms, CPU around 10 ms.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("http_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("http_request_duration_seconds", "HTTP request latency",
                                 ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("search_stage_seconds", "Time per search stage (per batch)",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("search_batch_size", "Requests per batch", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("search_queue_depth", "Requests waiting for a batch", registry=r)
        self.items = Gauge("index_items", "Listings in the served index", registry=r)
        self.info = Gauge("service_build_info", "Served versions and placement (value is 1)",
                          ["model_version", "index_version", "encoder_device", "index_placement"], registry=r)
        self.reloads = Counter("index_reloads", "Version reloads", ["result"], registry=r)
        self.ready = Gauge("service_ready", "1 when the model and index are loaded and warmed", registry=r)

    def set_served(self, model_version: str, index_version: str, encoder: str, placement: str, items: int) -> None:
        self.info.clear()
        self.info.labels(model_version, index_version, encoder, placement).set(1)
        self.items.set(items)

    def render(self) -> bytes:
        return generate_latest(self.registry)
