"""Building a FAISS inner-product index over unit vectors: arrays in, an index out.

The index type is an index_factory string, chosen by size and a memory budget (`choose_index_key`)
or given by the user. Vectors are L2-normalised fused listing embeddings, so inner product = cosine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

# Below this many vectors an exact scan is fast enough and needs no training or tuning.
FLAT_MAX_ITEMS = 200_000
# Above this many vectors (or when fp32 vectors exceed the budget) product quantisation pays.
PQ_MIN_ITEMS = 5_000_000
# Product-quantised codes plateau at ANN recall@10 0.62-0.70 on realistic vectors whatever nprobe
# (docs/PERFORMANCE.md, Index): a PQ index returns RERANK_FACTOR * k candidates, rescored exactly
# from vectors.npy (k * 8 fp16 rows: ~40 KB read per query at k=10, d=256). Not a faiss parameter.
RERANK_FACTOR = 8
SEARCHER_PARAMS = ("rerank",)


@dataclass
class BuiltIndex:
    index: faiss.Index
    key: str
    build_seconds: float
    params: dict[str, Any] = field(default_factory=dict)  # search-time parameters (nprobe, efSearch)
    tuning: dict[str, Any] = field(default_factory=dict)  # index/tune.py's TuneResult.to_dict(), when tuned

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)


def bytes_per_item(key: str, dim: int) -> float:
    """Rough memory per vector of an index family (codes + graph/list overhead)."""
    k = key.upper()
    if "PQ" in k:
        m = int(k.split("PQ")[1].split("X")[0].split(",")[0] or dim // 8)
        return m + 8  # one byte per sub-quantiser + the stored id
    if k.startswith("HNSW"):
        links = int(k[4:].split(",")[0] or 32)
        return 4 * dim + 8 * links  # fp32 vector + ~2*M int32 neighbours
    if "SQ8" in k:
        return dim + 8
    if "SQFP16" in k or "FLAT16" in k:
        return 2 * dim + 8
    return 4 * dim + (8 if k.startswith("IVF") else 0)


def choose_index_key(n: int, dim: int, memory_budget_bytes: float | None = None) -> str:
    """Flat for small catalogs, HNSW for medium ones, IVF-PQ for large ones or a tight budget."""
    if n <= 0:
        raise ValueError(f"n: an index needs at least one vector, got {n}")
    fp32 = 4.0 * dim * n
    fits = memory_budget_bytes is None or fp32 * 1.1 <= memory_budget_bytes
    if n <= FLAT_MAX_ITEMS and fits:
        return "Flat"
    nlist = int(2 ** round(math.log2(max(64, 4 * math.sqrt(n)))))
    if n < PQ_MIN_ITEMS and (memory_budget_bytes is None or (4 * dim + 256) * n <= memory_budget_bytes):
        return "HNSW32,Flat"
    m = max(8, min(dim // 4, 64))
    while dim % m:
        m -= 1
    # "np": no polysemous training. It only serves polysemous_ht search (never used here) and took
    # 222 s instead of 9 s to train IVF512,PQ64x8 on 16k vectors (2 cores, bench/index_families.py).
    return f"IVF{nlist},PQ{m}x8np"


def build_index(vectors: np.ndarray, key: str = "auto", *, seed: int = 0, train_size: int = 200_000,
                memory_budget_bytes: float | None = None) -> BuiltIndex:
    """Build an inner-product index of `vectors` (n, d) float32; rows are the listing positions."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"vectors: expected a non-empty (n, d) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("vectors: contain NaN or inf")
    n, d = x.shape
    if key == "auto":
        key = choose_index_key(n, d, memory_budget_bytes)
    start = time.perf_counter()
    try:
        index = faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"index key: {key!r} is not a valid faiss index_factory string ({e})") from e
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = x if n <= train_size else x[rng.choice(n, train_size, replace=False)]
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and sample.shape[0] < ivf.nlist:
            raise ValueError(f"index key: {key!r} needs >= {ivf.nlist} vectors to train, got {sample.shape[0]}")
        index.train(sample)
    index.add(x)
    params: dict[str, Any] = {}
    if faiss.try_extract_index_ivf(index) is not None:
        params["nprobe"] = min(16, faiss.extract_index_ivf(index).nlist)
    if key.upper().startswith("HNSW"):
        params["efSearch"] = 64
    if "PQ" in key.upper():
        params["rerank"] = RERANK_FACTOR
    return BuiltIndex(index, key, time.perf_counter() - start, params)


def rebuild_index(previous: faiss.Index, key: str, vectors: np.ndarray, *, seed: int = 0,
                  max_growth: float = 2.0) -> BuiltIndex:
    """The same index family over new vectors (an updated catalog), reusing training where it can.

    An IVF index keeps its trained coarse quantiser and PQ codebooks (clone, empty, add): the fused
    vectors come from the same towers, so their distribution has not moved. When the catalog grew
    more than `max_growth` times, the lists would be too long for the tuned nprobe: train afresh.
    Other families have nothing to reuse (HNSW trains nothing; Flat is a copy)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != previous.d:
        raise ValueError(f"vectors: expected (n, {previous.d}), got shape {x.shape}")
    ivf = faiss.try_extract_index_ivf(previous)
    if ivf is None or not previous.is_trained or x.shape[0] > max_growth * max(1, previous.ntotal):
        return build_index(x, key, seed=seed)
    start = time.perf_counter()
    index = faiss.clone_index(previous)
    index.reset()
    index.add(x)
    params: dict[str, Any] = {"nprobe": min(16, faiss.extract_index_ivf(index).nlist)}
    if "PQ" in key.upper():
        params["rerank"] = RERANK_FACTOR
    return BuiltIndex(index, key, time.perf_counter() - start, params)


def apply_params(index: faiss.Index, params: dict[str, Any]) -> None:
    """Set search-time parameters (nprobe, efSearch) on a CPU index; the searcher's own
    parameters (`rerank`) are not faiss' and are skipped."""
    ps = faiss.ParameterSpace()
    for name, value in params.items():
        if name not in SEARCHER_PARAMS:
            ps.set_index_parameter(index, name, value)


def save_index(index: faiss.Index, path: str) -> None:
    faiss.write_index(index, path)


def load_index(path: str, mmap: bool = False) -> faiss.Index:
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        return faiss.read_index(path, flags)
    except RuntimeError as e:
        raise ValueError(f"{path}: not a readable faiss index ({str(e).splitlines()[0] if str(e) else e})") from e
