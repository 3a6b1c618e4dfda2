"""The in-process bound: tokenize + encode + search + metadata, no HTTP, no queue.

    nice -n 10 .venv/bin/python -m bench.inprocess --artifacts var/bench/a100k --sample var/sample \
        [--queries 1000] [--k 10] [--batch 1] [--backend auto] [--threads 2]

Runs `Engine.search_batch` (what the micro-batcher's worker thread runs) over >= 1,000 distinct
sample queries, one batch of `--batch` queries at a time, and reports per-stage and total
percentiles, with the encode + search bound (tokenize + encode + search) that the service's
latency is compared against (docs/PERFORMANCE.md). `--profile FILE` also writes a cProfile of the
run (the stages are all in this thread, so cProfile sees everything).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import time
from pathlib import Path

import torch

from bench.common import load_queries, machine, percentiles_ms
from service.serving.engine import Engine, SearchRequest
from service.serving.settings import Settings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=Path("var/bench/a100k"))
    ap.add_argument("--sample", type=Path, default=Path("var/sample"))
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--backend", default="auto", help="encoder_backend: auto | torch | onnx | int8")
    ap.add_argument("--device", default="auto", help="encoder_device")
    ap.add_argument("--threads", type=int, default=2, help="encoder intra-op threads")
    ap.add_argument("--search-threads", type=int, default=1, help="faiss OpenMP threads (0: default)")
    ap.add_argument("--blas-threshold", type=int, default=4, help="faiss distance_compute_blas_threshold")
    ap.add_argument("--rounds", type=int, default=1, help="passes over the query set")
    ap.add_argument("--profile", type=Path, help="write a cProfile of the timed loop here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    settings = Settings(artifacts=a.artifacts, encoder_backend=a.backend, encoder_device=a.device,
                        torch_threads=a.threads, search_threads=a.search_threads, max_batch=max(a.batch, 1),
                        cache_size=0, reload_poll_s=0)
    engine = Engine(settings)
    t0 = time.perf_counter()
    lv = engine.load()
    load_s = time.perf_counter() - t0
    queries = load_queries(a.sample, a.queries)
    batches = [[SearchRequest(q, a.k) for q in queries[i:i + a.batch]] for i in range(0, len(queries), a.batch)]
    import faiss

    faiss.cvar.distance_compute_blas_threshold = a.blas_threshold  # as the service sets it

    def set_search_threads() -> None:
        # Per calling thread, and torch's first parallel op in a thread resets it: set it before
        # every batch, as the service's batch runner does (service/api/app.py make_batch_runner).
        if a.search_threads:
            faiss.omp_set_num_threads(a.search_threads)

    for b in batches[:20]:  # warm every length bucket that the set uses
        set_search_threads()
        engine.search_batch(b)
    stages: dict[str, list[float]] = {}
    totals: list[float] = []
    prof = cProfile.Profile() if a.profile else None
    start = time.perf_counter()
    if prof:
        prof.enable()
    for _ in range(a.rounds):
        for b in batches:
            set_search_threads()
            t = time.perf_counter()
            res = engine.search_batch(b)
            totals.append(time.perf_counter() - t)
            for name, sec in res.stages.items():
                stages.setdefault(name, []).append(sec)
    if prof:
        prof.disable()
        prof.dump_stats(str(a.profile))
    wall = time.perf_counter() - start
    bound = [stages["tokenize"][i] + stages["encode"][i] + stages["search"][i] for i in range(len(totals))]
    print(json.dumps({
        "machine": machine(), "version": lv.version, "items": lv.n_items, "index": lv.manifest.get("index_key"),
        "index_params": lv.manifest.get("index_params"), "encoder": lv.encoder.describe, "placement": lv.searcher.placement,
        "threads": a.threads, "search_threads": a.search_threads,
        "blas_threshold": a.blas_threshold, "k": a.k, "batch": a.batch, "queries": len(queries), "load_s": round(load_s, 2),
        "total_ms": percentiles_ms(totals), "encode_plus_search_ms": percentiles_ms(bound),
        "stages_ms": {name: percentiles_ms(v) for name, v in stages.items()},
        "qps": round(len(totals) * a.batch / wall, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
