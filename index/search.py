"""Searching the index, placed on GPU or CPU, with optional row filters.

Placement (`choose_placement`), in order of preference:
  faiss-gpu   the installed faiss has GPU support and a GPU is visible;
  torch-cuda  CUDA is present but faiss is CPU-only: exact fp16 inner product in torch;
  faiss-cpu   otherwise.
Filters arrive as a boolean mask over rows. On CPU: a very selective mask is answered by an exact
scan of the matching rows; otherwise faiss searches with an IDSelectorBitmap, and a query left
with fewer than k rows (few matches in the probed lists) is answered by the exact scan. On GPU: the
torch path masks scores before top-k (exact); faiss-gpu oversamples, post-filters and refills from
an exact scan of the subset when too few survive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from index.build import apply_params

# A filter that leaves at most this many rows is answered by an exact scan of those rows.
EXACT_SUBSET_MAX = 50_000
# Exact scans of a large subset go in chunks of this many rows (bounded fp32 scratch: 64 MiB at d=256).
EXACT_CHUNK_ROWS = 65_536
PLACEMENTS = ("faiss-gpu", "torch-cuda", "faiss-cpu")


def faiss_gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get is not None else 0
    except Exception:  # noqa: BLE001 - a CPU build may raise instead of returning 0
        return 0


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return False
    return bool(torch.cuda.is_available())


def gpu_supported(index: faiss.Index) -> bool:
    """Whether faiss can clone this index family to a GPU: flat, IVF-Flat, IVF-PQ and IVF-SQ can;
    HNSW cannot (its graph search has no faiss GPU kernel; cuVS' CAGRA is a different index)."""
    return not isinstance(index, faiss.IndexHNSW)


def choose_placement(requested: str, faiss_gpus: int, cuda: bool, gpu_index_ok: bool = True) -> str:
    """requested: auto | cpu | cuda | one of PLACEMENTS -> the placement to use (or ValueError).

    `gpu_index_ok` False (an HNSW index): `auto` and `cuda` skip faiss-gpu for the exact torch
    search when CUDA is there (exact beats an HNSW walk on a GPU), else stay on the CPU."""
    if requested in ("cpu", "faiss-cpu"):
        return "faiss-cpu"
    if requested == "faiss-gpu":
        if faiss_gpus < 1:
            raise ValueError("index_device: faiss-gpu asked for, but the installed faiss sees no GPU")
        if not gpu_index_ok:
            raise ValueError("index_device: faiss-gpu asked for, but faiss has no GPU version of this "
                             "index (HNSW); use torch-cuda, auto, or an IVF index")
        return "faiss-gpu"
    if requested == "torch-cuda":
        if not cuda:
            raise ValueError("index_device: torch-cuda asked for, but torch sees no CUDA device")
        return "torch-cuda"
    if requested in ("auto", "cuda"):
        if faiss_gpus > 0 and gpu_index_ok:
            return "faiss-gpu"
        if cuda:
            return "torch-cuda"
        if requested == "cuda":
            raise ValueError("index_device: cuda asked for, but no GPU is visible")
        return "faiss-cpu"
    raise ValueError(f"index_device: {requested!r} is not auto, cpu, cuda or one of {', '.join(PLACEMENTS)}")


@dataclass
class SearchResult:
    scores: np.ndarray  # (B, k) float32, -inf where fewer than k rows matched
    rows: np.ndarray  # (B, k) int64, -1 where fewer than k rows matched


def _exact_subset(vectors: np.ndarray, rows: np.ndarray, q: np.ndarray, k: int,
                  chunk: int = EXACT_CHUNK_ROWS) -> SearchResult:
    """Exact top-k over the given rows only (vectors may be fp16 or a memory map), in row chunks
    so a large subset never materialises as one fp32 copy."""
    B = q.shape[0]
    scores = np.full((B, k), -np.inf, dtype=np.float32)
    out = np.full((B, k), -1, dtype=np.int64)
    if len(rows) == 0 or B == 0:
        return SearchResult(scores, out)
    best_s = np.full((B, 0), -np.inf, dtype=np.float32)
    best_r = np.zeros((B, 0), dtype=np.int64)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        s = q @ np.asarray(vectors[part], dtype=np.float32).T  # (B, m)
        kk = min(k, len(part))
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]  # (B, kk)
        cand_s = np.hstack([best_s, np.take_along_axis(s, top, axis=1)])  # (B, <= 2k)
        cand_r = np.hstack([best_r, part[top]])
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_r, order, 1)
    kk = best_s.shape[1]
    scores[:, :kk], out[:, :kk] = best_s, best_r
    return SearchResult(scores, out)


def rerank_exact(vectors: np.ndarray, q: np.ndarray, rows: np.ndarray, k: int) -> SearchResult:
    """Rescore candidate rows (B, c) of an approximate search exactly against `vectors` and keep
    the best k: what turns product-quantised candidates into exact scores and order."""
    ok = rows >= 0  # (B, c)
    safe = np.where(ok, rows, 0)
    cand = np.asarray(vectors[safe.ravel()], dtype=np.float32).reshape(*rows.shape, -1)  # (B, c, d)
    scores = np.einsum("bd,bcd->bc", q, cand)  # (B, c)
    scores = np.where(ok, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (B, <= k)
    return _pad(SearchResult(np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)), k)


class Searcher:
    """Base: `search(q (B, d) float32, k, allowed (n,) bool | None) -> SearchResult`."""

    placement = ""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors  # (n, d) fp16/fp32, possibly memory-mapped: exact subset scans
        self.ntotal = int(vectors.shape[0])

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> SearchResult:
        raise NotImplementedError  # pragma: no cover

    def describe(self) -> dict[str, Any]:
        return {"placement": self.placement, "ntotal": self.ntotal}


class FaissCpuSearcher(Searcher):
    placement = "faiss-cpu"

    def __init__(self, index: faiss.Index, vectors: np.ndarray, params: dict[str, Any] | None = None):
        super().__init__(vectors)
        self.index = index
        self.params = dict(params or {})
        apply_params(index, self.params)

    def _search_params(self, sel: Any) -> Any:
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            return faiss.SearchParametersIVF(sel=sel, nprobe=int(self.params.get("nprobe", ivf.nprobe)))
        if isinstance(self.index, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=sel, efSearch=int(self.params.get("efSearch", 64)))
        return faiss.SearchParameters(sel=sel)

    def _ranked(self, q: np.ndarray, k: int, params: Any = None) -> SearchResult:
        """The index's top k, or with `rerank` its top rerank*k rescored exactly (PQ indexes)."""
        factor = int(self.params.get("rerank", 0) or 0)
        depth = min(k * factor if factor > 1 else k, self.ntotal)
        scores, rows = self.index.search(q, depth, params=params)
        if factor > 1:
            return rerank_exact(self.vectors, q, rows, k)
        return _pad(SearchResult(scores, rows), k)

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> SearchResult:
        q = np.ascontiguousarray(q, dtype=np.float32)
        if allowed is None:
            return self._ranked(q, k)
        rows_ok = np.flatnonzero(allowed)
        if len(rows_ok) <= EXACT_SUBSET_MAX:
            return _exact_subset(self.vectors, rows_ok, q, k)
        bitmap = np.packbits(allowed, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
        return refill_short(self._ranked(q, k, self._search_params(sel)), len(rows_ok),
                            lambda short: _exact_subset(self.vectors, rows_ok, q[short], k))


class TorchCudaSearcher(Searcher):
    """Exact fp16 inner-product search on the GPU (DESIGN §6 reference path)."""

    placement = "torch-cuda"

    def __init__(self, vectors: np.ndarray, device: str = "cuda"):
        import torch

        super().__init__(vectors)
        self.torch = torch
        self.device = torch.device(device)
        self.matrix = torch.from_numpy(np.asarray(vectors, dtype=np.float16)).to(self.device)  # (n, d)

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> SearchResult:
        torch = self.torch
        qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float16)).to(self.device, non_blocking=True)
        scores = qt @ self.matrix.T  # (B, n) fp16 accumulate in fp32 by cuBLAS
        if allowed is not None:
            mask = torch.from_numpy(allowed).to(self.device)
            scores = scores.masked_fill(~mask, float("-inf"))
        k_eff = min(k, self.ntotal)
        top_s, top_i = torch.topk(scores.float(), k_eff, dim=1)
        top_s, top_i = top_s.cpu().numpy(), top_i.cpu().numpy().astype(np.int64)
        top_i[~np.isfinite(top_s)] = -1
        return _pad(SearchResult(top_s, top_i), k)


class FaissGpuSearcher(FaissCpuSearcher):
    """faiss on all visible GPUs; filters by oversampling + post-filtering + exact refill."""

    placement = "faiss-gpu"
    oversample = 4

    def __init__(self, index: faiss.Index, vectors: np.ndarray, params: dict[str, Any] | None = None,
                 shard: bool = False):
        # nprobe / efSearch are set on the CPU index, which the cloner copies to the GPU indexes:
        # faiss' CPU ParameterSpace does not reach into GPU indexes (GpuParameterSpace would).
        apply_params(index, dict(params or {}))
        co = faiss.GpuMultipleClonerOptions()
        co.useFloat16 = True
        # shard=False: every visible GPU holds a full replica (more QPS); True: the index is split
        # across them and each query goes to all shards (more capacity: an index too big for one GPU).
        co.shard = bool(shard)
        Searcher.__init__(self, vectors)
        self.index = faiss.index_cpu_to_all_gpus(index, co=co)
        self.params = dict(params or {})
        self.shard = bool(shard)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gpu_shard": self.shard}

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> SearchResult:
        q = np.ascontiguousarray(q, dtype=np.float32)
        if allowed is None:
            return self._ranked(q, k)
        rows_ok = np.flatnonzero(allowed)
        if len(rows_ok) <= EXACT_SUBSET_MAX:
            return _exact_subset(self.vectors, rows_ok, q, k)
        factor = int(self.params.get("rerank", 0) or 0)
        depth = min(k * max(self.oversample, factor), self.ntotal)
        raw = self.index.search(q, depth)
        if factor > 1:  # exact scores and order for the PQ candidates before filtering
            exact = rerank_exact(self.vectors, q, raw[1], depth)
            raw = (exact.scores, exact.rows)
        return post_filter(raw, allowed, k, lambda missing: _exact_subset(self.vectors, rows_ok, q[missing], k))


def post_filter(raw: tuple[np.ndarray, np.ndarray], allowed: np.ndarray, k: int, refill: Any) -> SearchResult:
    """Keep allowed rows of an oversampled result; rows with < k survivors are refilled exactly."""
    scores, rows = raw
    B = rows.shape[0]
    out_s = np.full((B, k), -np.inf, dtype=np.float32)
    out_r = np.full((B, k), -1, dtype=np.int64)
    short = []
    for b in range(B):
        keep = (rows[b] >= 0) & allowed[np.maximum(rows[b], 0)]
        got = rows[b][keep][:k]
        out_r[b, :len(got)], out_s[b, :len(got)] = got, scores[b][keep][:k]
        if len(got) < min(k, int(allowed.sum())):
            short.append(b)
    if short:
        exact = refill(np.asarray(short))
        out_s[short], out_r[short] = exact.scores, exact.rows
    return SearchResult(out_s, out_r)


def refill_short(res: SearchResult, n_allowed: int, exact: Any) -> SearchResult:
    """Queries that got fewer than min(k, n_allowed) rows (an IVF probe or an HNSW walk found too
    few rows passing the filter) are answered again by `exact(query_positions)`, so a response
    holds k listings whenever k listings match."""
    k = res.rows.shape[1]
    short = np.flatnonzero((res.rows >= 0).sum(axis=1) < min(k, n_allowed))
    if len(short):
        again = exact(short)
        res.scores[short], res.rows[short] = again.scores, again.rows
    return res


def _pad(res: SearchResult, k: int) -> SearchResult:
    B, got = res.rows.shape
    rows = res.rows.astype(np.int64, copy=False)
    scores = res.scores.astype(np.float32, copy=False)
    scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
    if got >= k:
        return SearchResult(scores[:, :k], rows[:, :k])
    pad_s = np.full((B, k - got), -np.inf, dtype=np.float32)
    pad_r = np.full((B, k - got), -1, dtype=np.int64)
    return SearchResult(np.hstack([scores, pad_s]), np.hstack([rows, pad_r]))


def make_searcher(index: faiss.Index, vectors: np.ndarray, params: dict[str, Any] | None = None,
                  device: str = "auto", gpu_shard: bool = False) -> Searcher:
    placement = choose_placement(device, faiss_gpu_count(), cuda_available(), gpu_supported(index))
    if placement == "faiss-gpu":
        return FaissGpuSearcher(index, vectors, params, shard=gpu_shard)
    if placement == "torch-cuda":
        return TorchCudaSearcher(vectors)
    return FaissCpuSearcher(index, vectors, params)
