"""Capacity, a fixed-rate soak and 2x overload of `GET /search` over loopback (docs/RELIABILITY.md).

    .venv/bin/python -m bench.overload --artifacts var/artifacts --sample var/sample \
        [--capacity-s 20] [--soak-s 180] [--soak-fraction 0.6] [--overload-s 60] [--overload-factor 2] \
        [--max-queue 64] [--timeout-ms 2000] [--max-conns 1024] [--capacity QPS]

Starts `service serve` on a free loopback port (result cache off; the bounded queue and deadline
under test are `--max-queue` / `--timeout-ms`), then runs three phases and prints one JSON line each:

1. capacity: 64 closed-loop clients for `--capacity-s`; capacity = answered 200s per second
   (`--capacity QPS` skips the measurement).
2. soak: an OPEN-loop arrival process at `--soak-fraction` x capacity for `--soak-s` (arrivals on a
   fixed schedule, not waiting for answers, so a slow server cannot slow the offered load down):
   p50/p99, status counts, transport errors, and the server's RSS (sum over its process group,
   from /proc) sampled every 5 s: first, last, max, growth.
3. overload: open loop at `--overload-factor` x capacity for `--overload-s`: the served rate (200s
   per second) against capacity, p99 of the accepted (200) requests against the deadline, 429s,
   5xx and transport errors.

Each phase's line also carries `client_cpu_per_s` (this load generator's CPU seconds per second:
what it takes from the server when they share cores) and `server`: CPU seconds per wall second and context switches per
second of each server thread ("main" is the event loop; from /proc/PID/task), and the batcher's
batches per second, mean batch size and mean stage times over the phase (from /metrics).

Bounded by construction: each phase is time-boxed and at most `--max-conns` connections are open
(an arrival that finds none free is counted as `client_dropped`, never queued in the client). The
client runs on the same cores as the server; each line carries the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import urllib.parse
from pathlib import Path

from bench.common import load_queries, machine, percentiles_ms
from bench.load import RawClient, free_port, scrape, stage_means, start_server, stop_server, wait_ready


def rss_bytes(pid: int) -> int:
    """Resident memory of every process in `pid`'s process group (the server and any workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pid:
                continue
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total


def thread_times(pid: int) -> dict[str, tuple[float, int]]:
    """(CPU seconds (user + system), context switches (voluntary + not)) of each thread of process
    `pid`: the main thread (the event loop) as "main", the others by name and thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, tuple[float, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                switches = sum(int(line.split()[1]) for line in f if "ctxt_switches:" in line)
        except OSError:
            continue
        name = "main" if int(tid) == pid else f"{stat[stat.index('(') + 1:stat.rindex(')')]}/{tid}"
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = ((int(fields[11]) + int(fields[12])) / tick, switches)  # utime, stime
    return out


class ServerView:
    """Where the server's time went during one phase: CPU seconds and context switches per thread
    per wall second, and the batcher's batches (rate, mean size, mean stage times) from /metrics."""

    def __init__(self, url: str, pid: int):
        self.url, self.pid = url, pid
        self.t0, self.threads0, self.m0 = time.perf_counter(), thread_times(pid), scrape(url)

    def finish(self) -> dict:
        wall = time.perf_counter() - self.t0
        threads, m = thread_times(self.pid), scrape(self.url)
        rates = {name: (round((cpu - self.threads0.get(name, (0.0, 0))[0]) / wall, 3),
                        round((sw - self.threads0.get(name, (0.0, 0))[1]) / wall))
                 for name, (cpu, sw) in threads.items()}
        busy = sorted((kv for kv in rates.items() if kv[1][0] >= 0.005), key=lambda kv: -kv[1][0])
        batches = m.get("search_batch_size_count", 0) - self.m0.get("search_batch_size_count", 0)
        return {"cpu_per_s": {name: cpu for name, (cpu, _) in busy},
                "switches_per_s": {name: sw for name, (_, sw) in busy},
                "batches_per_s": round(batches / wall, 1), "per_batch_ms": stage_means(self.m0, m)}


class Pool:
    """Idle keep-alive connections; at most `limit` open at once."""

    def __init__(self, host: str, port: int, limit: int):
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[RawClient] = []
        self.open = 0

    def take(self) -> RawClient | None:
        if self.idle:
            return self.idle.pop()
        if self.open >= self.limit:
            return None
        self.open += 1
        return RawClient(self.host, self.port)

    def fresh(self) -> RawClient:
        self.open += 1
        return RawClient(self.host, self.port)

    def give(self, conn: RawClient) -> None:
        self.idle.append(conn)

    async def drop(self, conn: RawClient) -> None:
        self.open -= 1
        await conn.close()

    async def close(self) -> None:
        for conn in self.idle:
            await conn.close()
        self.idle.clear()


class Tally:
    def __init__(self) -> None:
        self.ok_latency: list[float] = []
        self.all_latency: list[float] = []
        self.statuses: dict[str, int] = {}
        self.transport_errors = 0  # a request that got no answer (fresh connection refused, reset, cut)
        self.stale_reconnects = 0  # an idle keep-alive connection the server had closed; retried once
        self.client_dropped = 0
        self.cpu0 = time.process_time()  # this load generator's own CPU: what it takes from shared cores

    def summary(self, seconds: float) -> dict:
        s5xx = sum(n for code, n in self.statuses.items() if code.startswith("5"))
        return {"seconds": round(seconds, 1), "statuses": dict(sorted(self.statuses.items())), "5xx": s5xx,
                "transport_errors": self.transport_errors, "stale_reconnects": self.stale_reconnects,
                "client_dropped": self.client_dropped,
                "served_qps": round(self.statuses.get("200", 0) / seconds, 1),
                "client_cpu_per_s": round((time.process_time() - self.cpu0) / seconds, 3),
                "latency_ok_ms": percentiles_ms(self.ok_latency) if self.ok_latency else None,
                "latency_all_ms": percentiles_ms(self.all_latency) if self.all_latency else None}


async def one_request(pool: Pool, path: str, tally: Tally) -> None:
    conn = pool.take()
    if conn is None:
        tally.client_dropped += 1
        return
    t0 = time.perf_counter()
    reused = conn.writer is not None
    try:
        status, _ = await conn.get(path)
    except (OSError, asyncio.IncompleteReadError, ValueError):
        await pool.drop(conn)
        if not reused:
            tally.transport_errors += 1
            return
        # The server closed this idle keep-alive connection (uvicorn: after 5 s idle) before the request
        # reached it: retry once on a fresh connection, as an HTTP client does for an idempotent GET.
        tally.stale_reconnects += 1
        conn = pool.fresh()
        try:
            status, _ = await conn.get(path)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            tally.transport_errors += 1
            await pool.drop(conn)
            return
    dt = time.perf_counter() - t0
    pool.give(conn)
    tally.statuses[str(status)] = tally.statuses.get(str(status), 0) + 1
    tally.all_latency.append(dt)
    if status == 200:
        tally.ok_latency.append(dt)


async def closed_loop(url: str, paths: list[str], concurrency: int, seconds: float) -> dict:
    parsed = urllib.parse.urlparse(url)
    pool = Pool(parsed.hostname or "127.0.0.1", parsed.port or 80, concurrency)
    tally, counter = Tally(), {"i": 0}
    end = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < end:
            counter["i"] += 1
            await one_request(pool, paths[counter["i"] % len(paths)], tally)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    await pool.close()
    return tally.summary(time.perf_counter() - t0)


async def open_loop(url: str, paths: list[str], rate: float, seconds: float, max_conns: int,
                    pid: int | None) -> dict:
    """Arrivals at `rate`/s on a fixed schedule for `seconds`; then waits for the stragglers."""
    parsed = urllib.parse.urlparse(url)
    pool = Pool(parsed.hostname or "127.0.0.1", parsed.port or 80, max_conns)
    tally, tasks, rss = Tally(), set(), []
    t0 = time.perf_counter()
    next_rss, sent = t0, 0
    while True:
        now = time.perf_counter()
        if now - t0 >= seconds:
            break
        if pid is not None and now >= next_rss:
            rss.append(rss_bytes(pid))
            next_rss = now + 5.0
        due = int((now - t0) * rate)  # arrivals owed by now (a late tick sends its backlog at once)
        while sent < due:
            task = asyncio.create_task(one_request(pool, paths[sent % len(paths)], tally))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(min(0.002, 1.0 / rate))
    offered_s = time.perf_counter() - t0
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    await pool.close()
    out = tally.summary(offered_s) | {"offered_qps": round(sent / offered_s, 1), "sent": sent}
    if pid is not None:
        rss.append(rss_bytes(pid))
        out["rss_mb"] = {"first": round(rss[0] / 2**20, 1), "last": round(rss[-1] / 2**20, 1),
                         "max": round(max(rss) / 2**20, 1), "growth": round((rss[-1] - rss[0]) / 2**20, 1),
                         "samples": len(rss)}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=Path("var/artifacts"))
    ap.add_argument("--sample", type=Path, default=Path("var/sample"))
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--capacity", type=float, help="skip the capacity phase, use this QPS")
    ap.add_argument("--capacity-s", type=float, default=20.0)
    ap.add_argument("--soak-s", type=float, default=180.0)
    ap.add_argument("--soak-fraction", type=float, default=0.6)
    ap.add_argument("--overload-s", type=float, default=60.0)
    ap.add_argument("--overload-factor", type=float, default=2.0)
    ap.add_argument("--max-queue", type=int, default=64, help="server SERVICE_MAX_QUEUE (429 beyond it)")
    ap.add_argument("--timeout-ms", type=int, default=2000, help="server SERVICE_REQUEST_TIMEOUT_MS (the deadline)")
    ap.add_argument("--max-conns", type=int, default=1024)
    ap.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the server")
    ap.add_argument("--server-cpus", help="pin the server to these CPUs (taskset list, e.g. 0)")
    ap.add_argument("--client-cpus", help="pin this load generator to these CPUs (e.g. 1): with --server-cpus, "
                    "overload measures the server alone instead of server and client sharing the cores")
    a = ap.parse_args(argv)
    if a.client_cpus:
        os.sched_setaffinity(0, {int(c) for c in a.client_cpus.split(",")})
    queries = load_queries(a.sample, a.queries)
    paths = [f"/search?{urllib.parse.urlencode({'q': q, 'k': a.k})}" for q in queries]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"SERVICE_MAX_QUEUE": str(a.max_queue), "SERVICE_REQUEST_TIMEOUT_MS": str(a.timeout_ms),
           **dict(e.split("=", 1) for e in a.env)}
    proc = start_server(a.artifacts, port, 1, env, cpus=a.server_cpus)
    try:
        ready = wait_ready(url, proc)
        print(json.dumps({"machine": machine(), "items": ready.get("items"), "index_key": ready.get("index_key"),
                          "encoder_runtime": ready.get("encoder_runtime"), "server_env": env,
                          "queries": len(queries), "k": a.k, "server_cpus": a.server_cpus,
                          "client_cpus": a.client_cpus}), flush=True)
        capacity = a.capacity
        if capacity is None:
            asyncio.run(closed_loop(url, paths, 16, 3.0))  # warm-up
            view = ServerView(url, proc.pid)
            row = asyncio.run(closed_loop(url, paths, 64, a.capacity_s))
            capacity = row["served_qps"]
            print(json.dumps({"phase": "capacity", "concurrency": 64, **row, "server": view.finish(),
                              "loadavg_1m": machine()["loadavg_1m"]}), flush=True)
        if a.soak_s > 0:
            rate = a.soak_fraction * capacity
            view = ServerView(url, proc.pid)
            row = asyncio.run(open_loop(url, paths, rate, a.soak_s, a.max_conns, proc.pid))
            print(json.dumps({"phase": "soak", "rate": round(rate, 1), **row, "server": view.finish(),
                              "loadavg_1m": machine()["loadavg_1m"]}), flush=True)
        if a.overload_s > 0:
            rate = a.overload_factor * capacity
            view = ServerView(url, proc.pid)
            row = asyncio.run(open_loop(url, paths, rate, a.overload_s, a.max_conns, proc.pid))
            row["server"] = view.finish()
            ok = row["latency_ok_ms"] or {}
            print(json.dumps({"phase": "overload", "rate": round(rate, 1), "capacity_qps": capacity, **row,
                              "served_vs_capacity": round(row["served_qps"] / capacity, 3),
                              "p99_ok_within_deadline": bool(ok) and ok["p99"] <= a.timeout_ms,
                              "loadavg_1m": machine()["loadavg_1m"]}), flush=True)
    finally:
        stop_server(proc)


if __name__ == "__main__":
    main()
