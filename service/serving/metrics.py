"""Prometheus metrics, one registry per app (so tests can build several apps in one process).

With several worker processes (`service serve --workers N`), PROMETHEUS_MULTIPROC_DIR must name an
empty folder before the workers start (the CLI sets and empties it): every process then writes its
values to files there and /metrics, answered by any one worker, aggregates all of them. Gauges say
how they aggregate (`multiprocess_mode`); outside that mode the argument is ignored.
"""

from __future__ import annotations

import os

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
        self.queue_depth = Gauge("search_queue_depth", "Requests waiting for a batch", registry=r,
                                 multiprocess_mode="livesum")
        self.items = Gauge("index_items", "Listings in the served index", registry=r, multiprocess_mode="livemax")
        self.info = Gauge("service_build_info", "Served versions and placement (value is 1)",
                          ["model_version", "index_version", "encoder_device", "index_placement"], registry=r,
                          multiprocess_mode="liveall")
        self.reloads = Counter("index_reloads", "Version reloads", ["result"], registry=r)
        self.ready = Gauge("service_ready", "1 when the model and index are loaded and warmed", registry=r,
                           multiprocess_mode="livemin")
        self.cache = Counter("search_cache_lookups", "Result cache lookups", ["result"], registry=r)
        self.cache_entries = Gauge("search_cache_entries", "Entries in the result cache", registry=r,
                                   multiprocess_mode="livesum")
        self.querylog_dropped = Counter("query_log_dropped", "Query log lines dropped (writer behind)", registry=r)
        self.batch_queries = Counter("search_batch_queries", "Searches answered in POST /search/batch, by their "
                                     "own status", ["status"], registry=r)
        self.events = Counter("events_recorded", "Shopper events accepted by POST /events", ["action"], registry=r)
        self.events_refused = Counter("events_refused", "POST /events bodies refused (429): the events log writer "
                                      "was behind", registry=r)

    def set_served(self, model_version: str, index_version: str, encoder: str, placement: str, items: int) -> None:
        previous = getattr(self, "_served", None)
        if previous is not None:  # zero first: in multi-process mode clear() leaves the file's value
            self.info.labels(*previous).set(0)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # not implemented there: the zero above does it
            self.info.clear()
        self._served = (model_version, index_version, encoder, placement)
        self.info.labels(*self._served).set(1)
        self.items.set(items)

    def process_exit(self) -> None:
        """Multi-process mode: drop this process's live gauges (its counters stay in the totals)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # every worker's files, this one's included
            return generate_latest(registry)
        return generate_latest(self.registry)
