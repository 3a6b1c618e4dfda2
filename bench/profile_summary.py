"""Summarise a py-spy collapsed-stack profile of the server by stage (python -m bench.load --profile).

    .venv/bin/python -m bench.profile_summary var/bench/results/prof/profile-c1.txt [--top 15]

Each sample is attributed to the category of its innermost frame that matches one (markers below),
and to its thread (the event loop's main thread, the batch worker, others), so the table says
where the CPU time of a request goes. Samples of threads waiting for work are dropped (`IDLE_LEAVES`),
so percentages are of busy samples.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

# (category, markers): first match wins, most specific first
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("encode: onnxruntime", ("onnxruntime",)),
    ("encode: torch", ("torch/nn/", "MiniLM.", "_torch_forward")),
    ("tokenize", ("QueryEncoder.tokenize", "Tokenizer.ids", "tokenizers")),
    ("search: faiss", ("faiss",)),
    ("search: other", ("index/search.py", "index/store/denylist.py", "index/filters.py")),
    ("metadata: sqlite", ("index/store/listings.py",)),
    ("engine: other", ("service/serving/engine.py",)),
    ("batcher", ("service/serving/batcher.py",)),
    ("response: pydantic/json", ("pydantic", "fastapi/encoders.py", "json/", "fastapi/routing.py:serialize")),
    ("routing: fastapi/starlette", ("fastapi/", "starlette/")),
    ("service: middleware, routes, cache, logs", ("service/api/middleware.py", "service/api/disconnect.py",
                                                  "service/api/search.py", "service/serving/cache.py", "service/serving/querylog.py",
                                                  "service/serving/logctx.py", "logging/", "uuid.py")),
    ("metrics: prometheus", ("prometheus_client",)),
    ("http: uvicorn/httptools", ("uvicorn/", "httptools", "h11")),
    ("asyncio loop", ("asyncio/",)),
)


# A stack whose innermost frame is one of these is a thread waiting for work, not working (py-spy's
# own idle detection does not work in every container, so idle samples are dropped here).
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py", "Condition.wait (threading.py", "Queue.get (queue.py",
               "Runner.run (asyncio/runners.py", "Event.wait (threading.py", "Thread._wait_for_tstate_lock",
               "WorkerThread.run (anyio", "QueryLog._writer (service/serving/querylog.py")


def idle(stack: str) -> bool:
    return stack.rsplit(";", 1)[-1].startswith(IDLE_LEAVES)


def category(stack: str) -> str:
    """The category of the innermost frame that has one (a frame deep in uvicorn's send is HTTP
    work even though starlette's middleware frames sit above it)."""
    for frame in reversed(stack.split(";")):
        for name, markers in CATEGORIES:
            if any(m in frame for m in markers):
                return name
    return "other"


def summarise(path: Path) -> dict[str, object]:
    by_cat: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    total = idle_samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        if idle(stack):
            idle_samples += n
            continue
        total += n
        thread_frame = next((f for f in stack.split(";") if f.startswith("thread ")), "")
        thread = ("batch worker" if "search_" in thread_frame else
                  "event loop" if "MainThread" in thread_frame else "other threads")
        by_cat[category(stack)] += n
        by_thread[thread] += n
    return {"busy_samples": total, "idle_samples_dropped": idle_samples,
            "by_category_pct": {k: round(100 * v / max(total, 1), 1) for k, v in by_cat.most_common()},
            "by_thread_pct": {k: round(100 * v / max(total, 1), 1) for k, v in by_thread.most_common()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path)
    a = ap.parse_args(argv)
    print(json.dumps(summarise(a.profile), indent=1))


if __name__ == "__main__":
    main()
