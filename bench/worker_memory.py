"""Memory of N uvicorn workers: RSS and PSS of every process of `service serve --workers N`.

    .venv/bin/python -m bench.worker_memory --artifacts var/artifacts --workers 1,2 [--env NAME=VALUE]

Starts the server, waits for /readyz and a few seconds more (the first ready answer comes from one
worker; the others finish loading meanwhile), sends a few searches, then reads /proc/<pid>/smaps_rollup of the supervisor and each worker. PSS splits shared
pages (the memory-mapped vectors.npy, the Python and torch libraries) between the processes that
map them, so the PSS sum is what N workers really cost; RSS counts shared pages once per process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

from bench.common import machine
from bench.load import free_port, start_server, wait_ready


def children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(p.name))
    return out


def mem_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        if name in ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty"):
            fields[name.lower()] = int(value.split()[0])
    return fields


def measure(artifacts: Path, workers: int, env: dict[str, str]) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(artifacts, port, workers, env)
    try:
        wait_ready(url, proc)
        time.sleep(5.0 if workers > 1 else 1.0)  # the other workers finish loading
        for q in ("red mug", "striped wool scarf", "silver necklace", "blue vase") * 4:
            with urllib.request.urlopen(f"{url}/search?q={q.replace(' ', '+')}", timeout=30) as r:
                r.read()
        # `service` (the CLI process) is the server itself with 1 worker, the supervisor with N
        kids = children(proc.pid) if workers > 1 else []
        worker_pids = [p for p in kids if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]
        procs = [proc.pid, *kids]
        per = {pid: mem_kb(pid) for pid in procs}
        worker_pids = worker_pids or procs
        return {"workers": workers, "processes": len(procs), "worker_pids": worker_pids,
                "rss_mb": {str(p): round(v["rss"] / 1024, 1) for p, v in per.items()},
                "pss_mb": {str(p): round(v["pss"] / 1024, 1) for p, v in per.items()},
                "pss_total_mb": round(sum(v["pss"] for v in per.values()) / 1024, 1),
                "rss_total_mb": round(sum(v["rss"] for v in per.values()) / 1024, 1),
                "worker_private_mb": [round((per[p]["private_clean"] + per[p]["private_dirty"]) / 1024, 1)
                                      for p in worker_pids]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=Path("var/artifacts"))
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the server")
    a = ap.parse_args(argv)
    env = dict(e.split("=", 1) for e in a.env)
    print(json.dumps({"machine": machine(), "artifacts": str(a.artifacts), "server_env": a.env}))
    for n in (int(x) for x in a.workers.split(",")):
        print(json.dumps(measure(a.artifacts, n, env)), flush=True)


if __name__ == "__main__":
    main()
