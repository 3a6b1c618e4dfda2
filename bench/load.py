"""Load generator over loopback: latency percentiles and QPS of `GET /search` per concurrency.

    nice -n 10 .venv/bin/python -m bench.load --artifacts var/bench/a100k --sample var/sample \
        [--concurrency 1,16,64,256] [--requests 2000] [--workers 1] [--k 10] [--url URL] \
        [--env SERVICE_SEARCH_THREADS=1 ...] [--client raw|httpx] [--profile DIR]

Starts `service serve` on a free loopback port (result cache OFF: SERVICE_CACHE_SIZE=0, so every
request is encoded and searched), waits for /readyz, then for each concurrency level runs that
many closed-loop clients over >= 1,000 distinct sample queries (each client: send, wait for the
answer, send the next) for `--requests` requests after a short warm-up, and prints one JSON line:
p50/p95/p99 latency as the client saw it, QPS, non-200 answers, and the server's own mean time per
stage over the level (from /metrics: queue wait, tokenize, encode, search, metadata, total per
batch; mean batch size), i.e. the in-process cost measured in the same process under the same load. `--url` measures a server that is
already running instead. With `--profile DIR`, py-spy records the server (all threads) during the
concurrency-1 run into DIR/profile-c1.txt (collapsed stacks) for docs/PERFORMANCE.md.

The default client speaks HTTP/1.1 keep-alive on raw asyncio streams (one connection per client):
on a 2-core box an httpx client costs as much CPU as the server it measures; `--client httpx`
cross-checks. The client shares the machine with the server: the JSON says so (cpus, load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from bench.common import load_queries, machine, percentiles_ms

ROOT = Path(__file__).resolve().parent.parent


def scrape(url: str) -> dict[str, float]:
    """The search_stage_seconds sums/counts and batch-size sum/count from /metrics (one worker's
    view with --workers 1; all workers' with several, via the multi-process collector)."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(("search_stage_seconds_sum", "search_stage_seconds_count", "search_batch_size_sum",
                                "search_batch_size_count")):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
    return out


def stage_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean ms per observation of every stage between two scrapes (+ mean batch size)."""
    means: dict[str, float] = {}
    for name in after:
        if name.startswith("search_stage_seconds_sum"):
            count = name.replace("_sum", "_count")
            n = after.get(count, 0) - before.get(count, 0)
            if n > 0:
                stage = name.split('stage="')[1].split('"')[0]
                means[stage] = round((after[name] - before.get(name, 0)) / n * 1e3, 3)
    n = after.get("search_batch_size_count", 0) - before.get("search_batch_size_count", 0)
    if n > 0:
        means["batch_size"] = round((after["search_batch_size_sum"] - before.get("search_batch_size_sum", 0)) / n, 2)
    return means


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifacts: Path, port: int, workers: int, env_extra: dict[str, str],
                 cpus: str | None = None) -> subprocess.Popen:
    """`cpus` (e.g. "0"): run the server under `taskset -c cpus`, so a client pinned elsewhere does
    not take its CPU (every thread the server starts inherits the mask). The server runs with the
    served images' scheduling (SERVICE_SCHED_BATCH=1, as the Dockerfiles and the ConfigMap set it)
    unless `env_extra` or the environment says otherwise."""
    env = {"SERVICE_SCHED_BATCH": "1", **os.environ, "SERVICE_CACHE_SIZE": "0", "SERVICE_RELOAD_POLL_S": "0",
           "SERVICE_LOG_LEVEL": "warning",
           "SERVICE_MAX_QUEUE": "4096", "SERVICE_REQUEST_TIMEOUT_MS": "10000", **env_extra}
    exe = ROOT / ".venv/bin/service"  # the console script; a bare copy of the tree (the GPU machine) runs the module
    cmd = [*([str(exe)] if exe.exists() else [sys.executable, "-m", "service.cli"]), "serve", "--artifacts", str(artifacts), "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers)]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (workers included); SIGKILL it after 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def wait_ready(url: str, proc: subprocess.Popen | None, timeout_s: float = 300) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {timeout_s}s")


class RawClient:
    """One keep-alive HTTP/1.1 connection; GET only; Content-Length bodies (what the service sends)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length)
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run_level(url: str, queries: list[str], concurrency: int, n_requests: int, k: int, client: str,
                    warmup: int) -> dict:
    parsed = urllib.parse.urlparse(url)
    paths = [f"/search?{urllib.parse.urlencode({'q': q, 'k': k})}" for q in queries]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = {"next": 0}
    total = warmup + n_requests

    if client == "httpx":
        import httpx

        shared = httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=concurrency), timeout=30)

    async def one_client() -> None:
        conn = RawClient(parsed.hostname or "127.0.0.1", parsed.port or 80) if client == "raw" else None
        try:
            while True:
                i = counter["next"]
                if i >= total:
                    return
                counter["next"] = i + 1
                path = paths[i % len(paths)]
                t0 = time.perf_counter()
                if conn is not None:
                    status, _ = await conn.get(path)
                else:
                    status = (await shared.get(path)).status_code
                if i >= warmup:
                    latencies.append(time.perf_counter() - t0)
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            if conn is not None:
                await conn.close()

    started = None

    async def timed() -> None:
        nonlocal started
        while counter["next"] < warmup:
            await asyncio.sleep(0.001)
        started = time.perf_counter()

    clock = asyncio.create_task(timed())
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    end = time.perf_counter()
    await clock
    if client == "httpx":
        await shared.aclose()
    return {"concurrency": concurrency, "latency_ms": percentiles_ms(latencies),
            "qps": round(len(latencies) / (end - (started or end)), 1), "statuses": statuses}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=Path("var/bench/a100k"))
    ap.add_argument("--sample", type=Path, default=Path("var/sample"))
    ap.add_argument("--concurrency", default="1,16,64,256")
    ap.add_argument("--requests", type=int, default=2000, help="timed requests per concurrency level")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--url", help="measure this running server instead of starting one")
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw")
    ap.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the server")
    ap.add_argument("--profile", type=Path, help="py-spy the server during the concurrency-1 run into this folder")
    a = ap.parse_args(argv)
    queries = load_queries(a.sample, a.queries)
    if len(queries) < 1000 and a.queries >= 1000:
        print(f"warning: only {len(queries)} distinct queries in {a.sample}", file=sys.stderr)
    proc = None
    url = a.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(a.artifacts, port, a.workers, dict(e.split("=", 1) for e in a.env))
    try:
        ready = wait_ready(url, proc)
        print(json.dumps({"machine": machine(), "url": url, "workers": a.workers, "items": ready.get("items"),
                          "placement": ready.get("placement"), "index_key": ready.get("index_key"),
                          "queries": len(queries), "k": a.k, "client": a.client, "server_env": a.env}), flush=True)
        for c in (int(x) for x in a.concurrency.split(",")):
            spy = None
            if a.profile is not None and c == 1 and proc is not None:
                a.profile.mkdir(parents=True, exist_ok=True)
                spy = subprocess.Popen([str(ROOT / ".venv/bin/py-spy"), "record", "--pid", str(proc.pid),
                                        "--format", "raw", "--threads", "--rate", "500", "--subprocesses",
                                        "-o", str(a.profile / "profile-c1.txt")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            n = max(a.requests, c * 20)
            before = scrape(url)
            row = asyncio.run(run_level(url, queries, c, n, a.k, a.client, warmup=min(200, n // 10)))
            # server-side means over the level (warm-up included): the in-process cost of a batch
            row["server_stage_mean_ms"] = stage_means(before, scrape(url))
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            row["loadavg_1m"] = machine()["loadavg_1m"]
            print(json.dumps(row), flush=True)
    finally:
        if proc is not None:
            stop_server(proc)


if __name__ == "__main__":
    main()
