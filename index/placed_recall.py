"""ANN recall of the index as it was placed, measured at load (issue 15, item 7: tuned as served).

Search parameters are tuned at build time on the CPU index (index/tune.py), but the service may
search a different copy: faiss-gpu clones it with fp16 storage, torch-cuda scans fp16 vectors. So
at load the placed searcher is measured again: a small seeded sample of the stored vectors serves
as queries, exact ground truth comes from the stored vectors (index/tune.py `exact_topk`), and
recall is tie-aware (`ann_recall`). Each query's own row is left out of both its results and its
ground truth (a stored vector finds itself at rank 1, which says nothing about its neighbours).

Stored vectors sit where the index's lists are densest, so this figure reads higher than the tuned
recall on held-out query vectors: the two are reported side by side, and the change placement makes
is read against `cpu_same_sample`, the CPU index measured on the same sample (placements other than
faiss-cpu), whose only difference from `as_placed` is the placement.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from index.search import FaissCpuSearcher, Searcher
from index.tune import ann_recall, exact_topk

QUERY_SOURCE = "stored vectors (own row left out)"


def _drop_own(rows: np.ndarray, scores: np.ndarray, own: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k entries of (Q, k+1) results that are not the query's own row."""
    other = rows != own[:, None]  # (Q, k+1)
    order = np.argsort(~other, axis=1, kind="stable")[:, :k]  # own row (if present) moves to the end
    return np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)


def measure_placed_recall(searcher: Searcher, vectors: np.ndarray, k: int, n_queries: int,
                          seed: int = 0) -> dict[str, Any]:
    """ANN recall@k of `searcher` (as placed) on `n_queries` seeded stored vectors (Q, d)."""
    t0 = time.perf_counter()
    n = int(vectors.shape[0])
    k = min(int(k), n - 1)
    if k < 1 or n_queries < 1:
        return {"recall": None, "k": k, "n_queries": 0, "queries": QUERY_SOURCE}
    own = np.sort(np.random.default_rng(seed).choice(n, min(n_queries, n), replace=False))  # (Q,)
    q = np.asarray(vectors[own], dtype=np.float32)  # (Q, d)
    found = searcher.search(q, k + 1)
    rows, _ = _drop_own(found.rows, found.scores, own, k)  # (Q, k)
    ex_s, ex_r = exact_topk(vectors, q, k + 1)  # (Q, k+1)
    _, kth_s = _drop_own(ex_r, ex_s, own, k)
    recall = ann_recall(vectors, q, rows, kth_s[:, -1])
    return {"recall": recall, "k": k, "n_queries": len(own), "seed": seed, "queries": QUERY_SOURCE,
            "placement": searcher.placement, "seconds": round(time.perf_counter() - t0, 3)}


def recall_report(manifest: dict[str, Any], searcher: Searcher, vectors: np.ndarray, n_queries: int,
                  seed: int = 0, cpu_index: Any = None) -> dict[str, Any]:
    """{tuned: what the build measured on the CPU index (None: an exact index, never tuned),
    as_placed: measured now on the placed searcher at the tuned k (None when n_queries is 0),
    cpu_same_sample: the CPU index (`cpu_index`, at the manifest's parameters) on the same sample,
    when the searcher is placed elsewhere}."""
    tuning = manifest.get("index_tuning") or {}
    tuned = None
    if tuning:
        tuned = {"recall": tuning.get("recall"), "k": tuning.get("k"), "n_queries": tuning.get("n_queries"),
                 "queries": tuning.get("queries"), "params": tuning.get("params"), "placement": "faiss-cpu"}
        check = tuning.get("check") or {}
        if check.get("recall") is not None:  # held-out part of the tuning queries (index/tune.py)
            tuned["check_recall"] = check["recall"]
    k = int(tuning.get("k") or 10)
    out: dict[str, Any] = {"tuned": tuned, "as_placed": None}
    if n_queries > 0:
        out["as_placed"] = measure_placed_recall(searcher, vectors, k, n_queries, seed)
        if cpu_index is not None and searcher.placement != FaissCpuSearcher.placement:
            cpu = FaissCpuSearcher(cpu_index, vectors, manifest.get("index_params"))
            out["cpu_same_sample"] = measure_placed_recall(cpu, vectors, k, n_queries, seed)
    return out
