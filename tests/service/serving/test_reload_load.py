"""Hot reload under concurrent load. Several client threads search without pause while the app
reloads to a deliberately SLOW version (load_version first waits while the clients are served
SLOW_REQUESTS more requests) and then to a FAILING one:
no request fails, every response names a valid version (the old one before the swap, the new one
after it, never back). Latency during a reload is not asserted here (a timing ratio);
docs/PERFORMANCE.md "Reload" quotes a measured run."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import clone_version

from index.store.artifacts import ArtifactError, ArtifactStore
from service.api.app import create_app
from service.serving import engine as engine_mod
from service.serving.settings import Settings

QUERIES = ["red mug", "wool scarf", "gift for her", "ceramic vase", "silver earrings", "striped blue",
           "handmade", "vintage lamp"]
CLIENTS = 4
# Each client pauses between requests (a storefront is not a closed loop at saturation): the
# reload's CPU work then competes with serving the way it does on a replica with headroom.
THINK_S = 0.01
# Requests the clients are served while the slow (failing) version loads: the windows hold enough
# requests by construction, on a fast machine or a slow one (a fixed sleep held 88 on a slow run).
SLOW_REQUESTS, FAILING_REQUESTS = 60, 50


@dataclass
class Sample:
    worker: int
    start: float
    end: float
    status: int
    version: str | None


class Load:
    """CLIENTS threads searching back to back until stopped; every response recorded."""

    def __init__(self, client: TestClient):
        self.client, self.samples, self.stop = client, [], threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(w,), daemon=True) for w in range(CLIENTS)]

    def run(self, worker: int) -> None:
        i = worker
        while not self.stop.is_set():
            t0 = time.perf_counter()
            r = self.client.post("/search", json={"query": QUERIES[i % len(QUERIES)], "k": 10})
            t1 = time.perf_counter()
            version = r.json().get("index_version") if r.status_code == 200 else None
            with self.lock:
                self.samples.append(Sample(worker, t0, t1, r.status_code, version))
            i += 1
            time.sleep(THINK_S)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def count(self) -> int:
        with self.lock:
            return len(self.samples)

    def wait_for(self, n: int, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while self.count() < n and time.monotonic() < end:
            time.sleep(0.02)


@pytest.fixture
def two_versions(artifacts_copy: Path, tiny_build) -> tuple[Path, str, str]:
    store = ArtifactStore(artifacts_copy)
    clone_version(store, tiny_build.version, "v-next")
    return artifacts_copy, tiny_build.version, "v-next"


@pytest.mark.slow
def test_reload_under_load_slow_then_failing(two_versions, monkeypatch) -> None:
    artifacts, old, new = two_versions
    real_load = engine_mod.load_version
    windows: list[tuple[float, float]] = []  # (reload asked, reload answered)

    def slow(settings, version=None):
        load.wait_for(load.count() + SLOW_REQUESTS)
        return real_load(settings, version)

    def failing(settings, version=None):
        load.wait_for(load.count() + FAILING_REQUESTS)
        raise ArtifactError(f"{version}: deliberately broken")

    # torch encoder: the reload mechanism is under test, not the int8 backend's load-time export
    # (it holds the GIL for seconds: docs/PERFORMANCE.md "## Index"); no result cache: every request searches.
    settings = Settings(artifacts=artifacts, reload_poll_s=0, admin_token="t0ken", warmup_queries=4, max_batch=8,
                        denylist_poll_s=0, encoder_backend="torch", cache_size=0)
    auth = {"Authorization": "Bearer t0ken"}
    with TestClient(create_app(settings)) as client:
        end = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < end:
            time.sleep(0.05)
        with Load(client) as load:
            load.wait_for(40)  # warm the path, then measure the steady state
            steady_from = time.perf_counter()
            load.wait_for(load.count() + 400)
            steady_to = time.perf_counter()

            monkeypatch.setattr(engine_mod, "load_version", slow)
            t0 = time.perf_counter()
            r = client.post("/admin/reload", json={"version": new}, headers=auth)
            windows.append((t0, time.perf_counter()))
            assert r.status_code == 200 and r.json()["index_version"] == new
            load.wait_for(load.count() + 100)

            monkeypatch.setattr(engine_mod, "load_version", failing)
            t0 = time.perf_counter()
            r = client.post("/admin/reload", json={"version": old}, headers=auth)
            windows.append((t0, time.perf_counter()))
            assert r.status_code == 409 and "still serving" in r.json()["message"]
            load.wait_for(load.count() + 100)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["index_version"] == new
        assert "deliberately broken" in ready.json()["last_reload_error"]
        assert 'index_reloads_total{result="failed"} 1.0' in client.get("/metrics").text

    samples = load.samples
    assert len(samples) > 600
    failed = [s for s in samples if s.status != 200]
    assert not failed, f"{len(failed)} failed requests, e.g. {failed[0]}"
    assert {s.version for s in samples} <= {old, new}
    (slow_asked, slow_done), (fail_asked, _) = windows
    for s in samples:
        if s.end < slow_asked:
            assert s.version == old, s  # before the swap: the old version
        if s.start > slow_done:
            assert s.version == new, s  # after the swap (and through the failed reload): the new one
    for w in range(CLIENTS):  # each client's sequence switches once, never back
        seq = [s.version for s in sorted(samples, key=lambda s: s.start) if s.worker == w]
        assert seq == sorted(seq, key=lambda v: v == new), f"client {w} went back to the old version"

    steady = [s.end - s.start for s in samples if steady_from <= s.start and s.end <= steady_to]
    during = [s.end - s.start for s in samples if any(a <= s.end and s.start <= b for a, b in windows)]
    assert len(steady) >= 300 and len(during) >= 100, (len(steady), len(during))
    # enough requests fell inside and outside the reload windows for the checks above to mean something
