"""Graceful shutdown of `service serve`, as Kubernetes does it: SIGTERM while requests are in flight.

The real command runs as a subprocess on a free loopback port over the tiny published artifact.
The micro-batcher is told to wait long for company (SERVICE_MAX_WAIT_US), so a few concurrent
searches are still in flight when SIGTERM arrives. Then: new connections are refused or /readyz
says 503 (the pod is not ready), every in-flight search still completes with 200, and the process
exits 0 well within the pod's grace period (k8s/base/deployment.yaml: 45 s minus the 10 s preStop).
"""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import Server, serve

pytestmark = pytest.mark.slow

BATCH_WAIT_S = 3.0  # how long the first request of a batch waits for company
EXIT_WITHIN_S = 35.0  # terminationGracePeriodSeconds (45) - preStop sleep (10)


@pytest.fixture
def server(tiny_build, tmp_path: Path) -> Iterator[Server]:
    env = {
        "SERVICE_MAX_WAIT_US": str(int(BATCH_WAIT_S * 1e6)),
        "SERVICE_MAX_BATCH": "64",
        "SERVICE_REQUEST_TIMEOUT_MS": "30000",
        "SERVICE_RELOAD_POLL_S": "0",
        "SERVICE_CACHE_SIZE": "0",
        "SERVICE_WARMUP_QUERIES": "1",
        "SERVICE_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    with serve(tiny_build.path.parent.parent, tmp_path / "serve.log", env) as s:
        yield s


def timed_search(url: str, query: str) -> tuple[int, float, dict]:
    r = httpx.post(url + "/search", json={"query": query, "k": 5}, timeout=60)
    return r.status_code, time.monotonic(), r.json()


def probe_readyz(url: str) -> str:
    """'refused' (listening socket closed), or the status code of /readyz on a new connection."""
    try:
        return str(httpx.get(url + "/readyz", timeout=2).status_code)
    except httpx.ConnectError:
        return "refused"


def test_sigterm_drains_in_flight_requests_and_exits_zero(server: Server) -> None:
    queries = ["red wool scarf", "ceramic mug", "leather bag", "silver ring"]
    with concurrent.futures.ThreadPoolExecutor(len(queries)) as pool:
        futures = [pool.submit(timed_search, server.url, q) for q in queries]
        time.sleep(BATCH_WAIT_S / 3)  # the requests are now waiting inside the micro-batcher
        assert not any(f.done() for f in futures), "requests finished before SIGTERM: raise BATCH_WAIT_S"
        sigterm_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)

        # While the in-flight requests are still running, a new client sees a pod that is not ready.
        probes = []
        time.sleep(0.3)  # uvicorn notices the signal within its 0.1 s tick
        while not all(f.done() for f in futures):
            probes.append((time.monotonic(), probe_readyz(server.url)))
            time.sleep(0.1)
        results = [f.result() for f in futures]

    first_done = min(done for _, done, _ in results)
    early = [p for t, p in probes if t < first_done]
    assert early, "no readiness probe happened while requests were in flight"
    assert set(early) <= {"refused", "503"}, early

    for status, done, body in results:
        assert status == 200, (status, body)
        assert body["results"], body
        assert done > sigterm_at  # it was really in flight when SIGTERM arrived

    try:
        code = server.proc.wait(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {EXIT_WITHIN_S}s after SIGTERM:\n{server.output()}")
    assert time.monotonic() - sigterm_at < EXIT_WITHIN_S
    assert code == 0, f"exit status {code} after SIGTERM:\n{server.output()}"
