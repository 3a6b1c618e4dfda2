"""Search parameters tuned at build time: the cheapest setting that reaches a target ANN recall@k.

ANN recall@k = mean over queries of |ANN top-k ∩ exact top-k| / k, measured with held-out QUERY
vectors (query-tower embeddings of judgment, interaction or pseudo queries). Item vectors must not
be used: each would find itself at rank 1 and overstate recall. Ties are counted as hits: a
returned row whose exact score reaches the exact k-th score is as good as the one exact search
happened to return (duplicate listings are common in marketplaces).

The knob is `nprobe` for IVF indexes and `efSearch` for HNSW. Recall grows with either (almost
monotonically), so a doubling sweep finds the first power of two that reaches the target, then a
bisection below it finds (nearly) the smallest value that does. An index that cannot reach the
target (product-quantised codes too coarse) keeps the cheapest setting within 0.002 of its best
recall and reports `reached: false`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from index.build import apply_params
from index.search import GPU_MAX_K, rerank_exact

# Largest efSearch tried: beyond it HNSW costs about as much as an exact scan of a medium catalog.
MAX_EF_SEARCH = 4096
# Bisection stops when the bracket is narrower than this fraction of its lower end (~12%):
# finer steps cost more build time than they save at query time.
BISECT_PRECISION = 1 / 8
# Two recalls closer than this are the same, given the sampling noise of ~1,000 queries.
RECALL_TOLERANCE = 0.002


@dataclass(frozen=True)
class TuneResult:
    params: dict[str, int]  # the chosen search parameters ({} for an exact index)
    recall: float  # measured ANN recall@k at `params`
    target: float
    k: int
    n_queries: int
    reached: bool  # False: the target is out of this index's reach; the best setting is kept
    curve: tuple[tuple[int, float, float], ...] = ()  # (knob value, recall, ms/query) per setting tried

    def to_dict(self) -> dict[str, Any]:
        return {"params": dict(self.params), "recall": self.recall, "target": self.target, "k": self.k,
                "n_queries": self.n_queries, "reached": self.reached,
                "curve": [{"value": v, "recall": r, "ms_per_query": ms} for v, r, ms in self.curve]}


def knob(index: faiss.Index) -> tuple[str, int, int] | None:
    """(parameter name, smallest, largest value) of the index's speed/recall knob, or None (exact)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:  # at most faiss-gpu's limit: a version may be served on either placement
        return "nprobe", 1, min(int(ivf.nlist), GPU_MAX_K)
    if isinstance(index, faiss.IndexHNSW):
        return "efSearch", 16, MAX_EF_SEARCH
    return None


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k by brute force, in row chunks: -> (scores (Q, k), rows (Q, k))."""
    n = vectors.shape[0]
    k = min(k, n)
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_r = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, n, chunk):
        block = np.asarray(vectors[start:start + chunk], dtype=np.float32)  # (c, d)
        s = queries @ block.T  # (Q, c)
        kk = min(k, s.shape[1])
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]  # (Q, kk)
        cand_s = np.hstack([best_s, np.take_along_axis(s, top, axis=1)])  # (Q, <= 2k)
        cand_r = np.hstack([best_r, top + start])
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_r, keep, 1)
    return best_s, best_r


def ann_recall(vectors: np.ndarray, queries: np.ndarray, found: np.ndarray, kth_exact: np.ndarray) -> float:
    """Tie-aware recall: the share of returned rows (Q, k) whose exact score reaches the k-th exact score."""
    k = found.shape[1]
    ok = found >= 0
    rows = np.where(ok, found, 0)
    scores = np.einsum("qd,qkd->qk", queries, np.asarray(vectors[rows.ravel()], np.float32).reshape(*rows.shape, -1))
    hits = ok & (scores >= kth_exact[:, None] - 1e-5)  # (Q, k)
    return float(hits.sum() / (k * len(queries)))


def _measure(index: faiss.Index, name: str, value: int, vectors: np.ndarray, queries: np.ndarray, k: int,
             kth: np.ndarray, rerank: int = 0) -> tuple[float, float]:
    apply_params(index, {name: value})
    t0 = time.perf_counter()
    _, found = index.search(queries, min(k * rerank, index.ntotal) if rerank > 1 else k)
    if rerank > 1:  # as the searcher serves a PQ index: candidates rescored exactly (index/search.py)
        found = rerank_exact(vectors, queries, found, k).rows
    ms = 1000 * (time.perf_counter() - t0) / len(queries)
    return ann_recall(vectors, queries, found, kth), ms


def tune_search_params(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, *, k: int = 10,
                       target: float = 0.95, max_queries: int = 1000, seed: int = 0,
                       kth: np.ndarray | None = None, rerank: int = 0) -> TuneResult:
    """Smallest nprobe / efSearch reaching `target` recall@k on `queries` (Q, d); applied to `index`.

    `rerank` > 1: recall is measured as the searcher serves the index, its top rerank*k rescored
    exactly from `vectors` (the `rerank` search parameter of PQ indexes).

    `kth` (Q,): the exact k-th scores of the queries, when already known (benchmarks compute them
    once for several indexes); else they are computed here by brute force."""
    if not 0 < target <= 1:
        raise ValueError(f"target ANN recall: must be in (0, 1], got {target}")
    if k < 1:
        raise ValueError(f"served k: must be >= 1, got {k}")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[0] == 0 or q.shape[1] != index.d:
        raise ValueError(f"tuning queries: expected a non-empty (Q, {index.d}) array, got shape {q.shape}")
    if len(q) > max_queries:
        pick = np.sort(np.random.default_rng(seed).choice(len(q), max_queries, replace=False))
        q, kth = q[pick], (None if kth is None else kth[pick])
    k = min(k, int(index.ntotal))
    spec = knob(index)
    if spec is None:
        return TuneResult({}, 1.0, target, k, len(q), True)
    name, lo, hi = spec
    if name == "efSearch":
        lo = max(lo, k)  # HNSW searches with max(efSearch, k) anyway
    if kth is None:
        kth = exact_topk(vectors, q, k)[0][:, -1]  # (Q,)
    tried: dict[int, tuple[float, float]] = {}

    def at(v: int) -> float:
        if v not in tried:
            tried[v] = _measure(index, name, v, vectors, q, k, kth, rerank)
        return tried[v][0]

    below, value = None, lo
    while at(value) < target and value < hi:
        below, value = value, min(2 * value, hi)
    reached = at(value) >= target
    if reached and below is not None:
        lo_v, hi_v = below, value  # recall(lo_v) < target <= recall(hi_v)
        while hi_v - lo_v > max(1, int(lo_v * BISECT_PRECISION)):
            mid = (lo_v + hi_v) // 2
            lo_v, hi_v = (lo_v, mid) if at(mid) >= target else (mid, hi_v)
        value = hi_v
    elif not reached:
        best = max(r for r, _ in tried.values())
        value = min(v for v, (r, _) in tried.items() if r >= best - RECALL_TOLERANCE)
    apply_params(index, {name: value})
    curve = tuple((v, r, ms) for v, (r, ms) in sorted(tried.items()))
    return TuneResult({name: value}, tried[value][0], target, k, len(q), reached, curve)


# ---------------------------------------------------------------------------------- held-out check

# Share of the held-out queries kept back to measure the ANN recall the publish gate checks; the
# rest tune. Half and half: both estimates rest on hundreds of queries at the default 1,000.
CHECK_SHARE = 0.5


def split_queries(n: int, seed: int, check_share: float = CHECK_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, disjoint (tune rows, check rows) of `n` held-out queries, each sorted. A recall
    measured on the queries the parameters were tuned on is biased upward (the sweep stops at
    the first value that reaches the target on them), so the gate reads the other part. n < 2:
    all tune, none check."""
    if not 0 < check_share < 1:
        raise ValueError(f"check share: must be in (0, 1), got {check_share}")
    if n < 2:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    n_check = min(n - 1, max(1, round(n * check_share)))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_check:]), np.sort(perm[:n_check])


def measure_recall(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int, rerank: int = 0) -> float:
    """ANN recall@k (tie-aware) of `index` at its current search parameters on `queries` (Q, d)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, int(index.ntotal))
    kth = exact_topk(vectors, q, k)[0][:, -1]  # (Q,)
    _, found = index.search(q, min(k * rerank, index.ntotal) if rerank > 1 else k)  # (Q, k or rerank*k)
    if rerank > 1:
        found = rerank_exact(vectors, q, found, k).rows
    return ann_recall(vectors, q, found, kth)


@dataclass(frozen=True)
class CheckedTuning:
    tuned: TuneResult  # tuned on the tune part
    check_recall: float | None  # measured on the check part at the tuned parameters (None: no check part)
    n_check: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.tuned.to_dict(), "check": {"recall": self.check_recall, "n_queries": self.n_check,
                                                  "seed": self.seed, "share": CHECK_SHARE}}


def tune_and_check(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, *, k: int = 10,
                   target: float = 0.95, max_queries: int = 1000, seed: int = 0, rerank: int = 0) -> CheckedTuning:
    """Split `queries` (Q, d) with `split_queries(Q, seed)`, tune on one part (at most
    `max_queries` of it), then measure ANN recall@k on the other (at most `max_queries` too)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    tune_rows, check_rows = split_queries(len(q), seed)
    tuned = tune_search_params(index, vectors, q[tune_rows], k=k, target=target, max_queries=max_queries,
                               seed=seed, rerank=rerank)
    check = q[check_rows]
    if len(check) > max_queries:
        check = check[np.sort(np.random.default_rng(seed + 1).choice(len(check), max_queries, replace=False))]
    recall = measure_recall(index, vectors, check, k, rerank) if len(check) else None
    return CheckedTuning(tuned, recall, len(check), seed)
