"""Searching the index, placed on GPU or CPU, with optional row filters.

Placement (`choose_placement`), in order of preference:
  faiss-gpu   the installed faiss has GPU support and a GPU is visible;
  torch-cuda  CUDA is present but faiss is CPU-only: exact search in torch (fp16 storage, fp32 scores);
  faiss-cpu   otherwise.
Filters arrive as a boolean mask over rows. On CPU: a very selective mask is answered by an exact
scan of the matching rows; otherwise faiss searches with an IDSelectorBitmap, and a query left
with fewer rows than it needs (few matches in the probed lists) is answered by the exact scan. On
GPU: the torch path masks scores on the device before top-k (exact); faiss-gpu oversamples, post-filters and
refills from an exact scan of the subset when too few survive.

Every faiss result is one ranking per (query, filter), whatever the depth asked and whatever else
is in the batch: it is built in fixed tiers (`DEPTH_BASE`, `merge_tiers`), and every score is
`exact_scores` of the stored vectors (vectors.npy), whichever path found the row. faiss-gpu never
gets a k or nprobe above `GPU_MAX_K`: tiers stop at it and deeper ones are exact scans."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from index.build import apply_params

log = logging.getLogger("index.search")

# A filter that leaves at most this many rows is answered by an exact scan of those rows.
EXACT_SUBSET_MAX = 50_000
# Exact scans of a large subset go in chunks of this many rows (bounded fp32 scratch: 64 MiB at d=256).
EXACT_CHUNK_ROWS = 65_536
# faiss-gpu's k-selection limit (GPU_MAX_SELECTION_K, faiss/gpu/utils/DeviceDefs.cuh): one GPU search
# returns at most this many rows per query and probes at most this many IVF lists (nprobe).
GPU_MAX_K = 2048
# A query's ranking is built in tiers of DEPTH_BASE * 2^t rows (10, 20, 40, ...; `tier_sizes`). Tier t
# keeps the exact best of its own candidate pool (rerank * size PQ candidates, an HNSW walk with
# max(efSearch, size), the top size rows of the probed IVF lists) that no earlier tier placed. A page
# at any offset reads the same tiers, so pages continue one ranking and a query's rows never depend
# on the depth another query of its batch needs. 10: the served k, whose pool is the tuned one.
DEPTH_BASE = 10
# Rows an exact family fetches beyond a tier's size before the exact re-scoring, so a near-tie at the
# cut (faiss' own fp32 or BLAS rounding against the served scores) cannot decide which rows it keeps.
TIE_SLACK = 8
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


def tier_sizes(depth: int, first: int = DEPTH_BASE, cap: int | None = None) -> list[int]:
    """The tiers a ranking `depth` rows deep reads: first * 2^t up to the first size >= depth, with
    `cap` (the most rows one faiss call may return) a tier of its own when the doubling steps over it."""
    sizes: list[int] = []
    size = first
    while not sizes or sizes[-1] < depth:
        if cap is not None and size > cap and (not sizes or sizes[-1] < cap):
            sizes.append(cap)
        else:
            sizes.append(size)
            size *= 2
    return sizes


def exact_scores(vectors: np.ndarray, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The served score of each candidate: q (B, d) · vectors[rows] for rows (B, c), fp32 from the
    stored vectors (vectors.npy, fp16), -inf where rows < 0. One dot product per pair (einsum, no
    BLAS blocking), so a (query, listing) pair gets the same bits whatever else is scored with it:
    filtered or not, alone or batched, reranked, fused or exact-scanned."""
    ok = rows >= 0  # (B, c)
    safe = np.where(ok, rows, 0)
    cand = np.asarray(vectors[safe.ravel()], dtype=np.float32).reshape(*rows.shape, -1)  # (B, c, d)
    scores = np.einsum("bd,bcd->bc", np.asarray(q, dtype=np.float32), cand)  # (B, c)
    return np.where(ok, scores, -np.inf).astype(np.float32)


def rerank_exact(vectors: np.ndarray, q: np.ndarray, rows: np.ndarray, k: int) -> SearchResult:
    """Rescore candidate rows (B, c) with `exact_scores` and keep the best k, score desc then row asc:
    what turns any index's candidates (PQ codes, fp32 copies, GPU fp16 copies) into served scores."""
    rows = np.asarray(rows, dtype=np.int64)
    return _best(rows, exact_scores(vectors, q, rows), k)


def _best(rows: np.ndarray, scores: np.ndarray, k: int) -> SearchResult:
    """The k best of scored candidates (B, c), score desc then row asc, -1 / -inf padded."""
    order = np.lexsort((rows, -scores), axis=1)[:, :k]  # (B, <= k)
    return _pad(SearchResult(np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)), k)


def exact_subset(vectors: np.ndarray, rows: np.ndarray, q: np.ndarray, k: int,
                  chunk: int = EXACT_CHUNK_ROWS) -> SearchResult:
    """Exact top-k over the given rows only (vectors may be fp16 or a memory map), in row chunks
    so a large subset never materialises as one fp32 copy. BLAS picks the best k + TIE_SLACK rows,
    `rerank_exact` gives them their served scores and order."""
    B = q.shape[0]
    if len(rows) == 0 or B == 0:
        return SearchResult(np.full((B, k), -np.inf, np.float32), np.full((B, k), -1, np.int64))
    keep = k + TIE_SLACK
    best_s = np.full((B, 0), -np.inf, dtype=np.float32)
    best_r = np.zeros((B, 0), dtype=np.int64)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        s = q @ np.asarray(vectors[part], dtype=np.float32).T  # (B, m)
        kk = min(keep, len(part))
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]  # (B, kk)
        cand_s = np.hstack([best_s, np.take_along_axis(s, top, axis=1)])  # (B, <= 2 keep)
        cand_r = np.hstack([best_r, part[top]])
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :keep]
        best_s, best_r = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_r, order, 1)
    return rerank_exact(vectors, q, best_r, k)


def _placed(rows: np.ndarray, got: np.ndarray) -> np.ndarray:
    """(B, w) bool: rows[b, j] is among got[b] (B, p)."""
    if rows.size * got.shape[1] <= 1 << 22:  # one broadcast compare (<= 4 MiB of booleans)
        return (rows[:, :, None] == got[:, None, :]).any(axis=2)
    return np.stack([np.isin(r, g) for r, g in zip(rows, got, strict=True)])


def merge_tiers(lists: list[SearchResult], sizes: list[int], k: int) -> SearchResult:
    """One ranking from tiers (`DEPTH_BASE`): tier t adds its best rows not placed yet until
    sizes[t] rows are placed. A tier that comes up short (its pool ran out) ends the ranking, so a
    deeper request never fills a position a shallower one left empty. -> the first k rows."""
    B = lists[0].rows.shape[0]
    got_r = np.full((B, 0), -1, dtype=np.int64)
    got_s = np.full((B, 0), -np.inf, dtype=np.float32)
    count = np.zeros(B, dtype=np.int64)  # rows placed per query
    going = np.ones(B, dtype=bool)  # no tier came up short yet
    for res, size in zip(lists, sizes, strict=True):
        new = (res.rows >= 0) & going[:, None] & ~_placed(res.rows, got_r)  # (B, w)
        rank = np.cumsum(new, axis=1)  # (B, w) 1-based rank among the new rows
        take = new & (rank <= (size - count)[:, None])
        b, j = np.nonzero(take)
        pos = count[b] + rank[b, j] - 1
        width = max(size, got_r.shape[1])
        nr = np.full((B, width), -1, dtype=np.int64)
        ns = np.full((B, width), -np.inf, dtype=np.float32)
        nr[:, :got_r.shape[1]], ns[:, :got_s.shape[1]] = got_r, got_s
        nr[b, pos], ns[b, pos] = res.rows[b, j], res.scores[b, j]
        got_r, got_s = nr, ns
        count += take.sum(axis=1)
        going &= count >= size
        if not going.any() or count.min() >= k:
            break
    return _pad(SearchResult(got_s, got_r), k)


class Searcher:
    """Base: `search(q (B, d) float32, k, allowed (n,) bool | None) -> SearchResult`.

    The rows are the first k of one ranking per (query, filter): `search(q, k2)` for k2 > k starts
    with `search(q, k)`, and a query's rows and scores do not depend on the other queries searched
    with it. Scores are `exact_scores` of the stored vectors, whichever path found the rows."""

    placement = ""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors  # (n, d) fp16/fp32, possibly memory-mapped: exact subset scans
        self.ntotal = int(vectors.shape[0])

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> SearchResult:
        raise NotImplementedError  # pragma: no cover

    def describe(self) -> dict[str, Any]:
        return {"placement": self.placement, "ntotal": self.ntotal}


class FaissCpuSearcher(Searcher):
    """faiss on the CPU; a filter goes to faiss as an IDSelector (or, when it leaves few rows, to an
    exact scan of them). Results are built in tiers (`DEPTH_BASE`, `merge_tiers`)."""

    placement = "faiss-cpu"
    depth_limit: int | None = None  # most rows one faiss call may return (faiss-gpu: GPU_MAX_K)
    selector = True  # filters reach faiss as an IDSelector (faiss-gpu: oversample and post-filter)

    def __init__(self, index: faiss.Index, vectors: np.ndarray, params: dict[str, Any] | None = None):
        super().__init__(vectors)
        self.index = index
        self.params = dict(params or {})
        apply_params(index, self.params)

    @property
    def rerank(self) -> int:
        """The exact re-rank factor of a PQ index (its pool is rerank * size rows), 0 for none."""
        factor = int(self.params.get("rerank", 0) or 0)
        return factor if factor > 1 else 0

    @property
    def first_tier(self) -> int:
        """HNSW: efSearch (each tier is a walk of its own; the first is the walk served today)."""
        if isinstance(self.index, faiss.IndexHNSW):
            return max(DEPTH_BASE, int(self.params.get("efSearch", 64)))
        return DEPTH_BASE

    def _search_params(self, sel: Any, ef: int | None = None) -> Any:
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            return faiss.SearchParametersIVF(sel=sel, nprobe=int(self.params.get("nprobe", ivf.nprobe)))
        if isinstance(self.index, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=sel, efSearch=int(ef or self.params.get("efSearch", 64)))
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def _pool_depth(self, size: int, filtered: bool) -> int:
        """Candidates fetched for a tier of `size` rows."""
        return size * self.rerank if self.rerank else size + TIE_SLACK

    def _faiss(self, q: np.ndarray, depth: int, sel: Any, ef: int | None = None) -> np.ndarray:
        return self.index.search(q, depth, params=self._search_params(sel, ef))[1]

    def _pools(self, q: np.ndarray, sizes: list[int],
               allowed: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per tier, the candidate rows (B, c) the index offers with their `exact_scores` (computed
        once per faiss call); None for a tier deeper than one faiss call may return (it is
        answered by the exact scan)."""
        sel, bitmap = None, None
        if allowed is not None and self.selector:
            bitmap = np.packbits(allowed, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
        if isinstance(self.index, faiss.IndexHNSW):  # a walk per distinct ef: max(efSearch, size)
            ef0 = int(self.params.get("efSearch", 64))
            walks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            for size in sizes:
                ef = max(ef0, size)
                if ef not in walks:
                    found = self._faiss(q, min(ef, self.ntotal), sel, ef)
                    walks[ef] = (found, exact_scores(self.vectors, q, found))
            pools: list[tuple[np.ndarray, np.ndarray] | None] = [walks[max(ef0, size)] for size in sizes]
        else:  # the index's own ranking is prefix-stable: one call at the deepest pool, sliced per tier
            limit = min(self.ntotal, self.depth_limit or self.ntotal)
            want = [min(self._pool_depth(size, allowed is not None), limit) for size in sizes]
            fits = [w >= min(size, self.ntotal) for size, w in zip(sizes, want, strict=True)]
            deepest = max((w for w, f in zip(want, fits, strict=True) if f), default=0)
            rows = self._faiss(q, deepest, sel) if deepest else np.zeros((len(q), 0), np.int64)
            scores = exact_scores(self.vectors, q, rows)
            pools = [(rows[:, :w], scores[:, :w]) if f else None for w, f in zip(want, fits, strict=True)]
        del bitmap  # the selector reads it during the searches above
        return pools

    def _tier(self, q: np.ndarray, size: int, pool: tuple[np.ndarray, np.ndarray] | None,
              allowed: np.ndarray | None, rows_ok: np.ndarray | None) -> SearchResult:
        """A tier's rows: the allowed candidates of its pool, exactly scored; a query left with fewer
        than `size` (an IVF probe or HNSW walk that found too few rows passing the filter, a GPU
        oversample the filter emptied) or a tier without a pool is answered by the exact scan."""
        def everything() -> np.ndarray:  # built only for an exact scan (an arange of n rows is not free)
            return np.arange(self.ntotal) if rows_ok is None else rows_ok

        if pool is None:
            return exact_subset(self.vectors, everything(), q, size)
        pool, scores = pool
        if allowed is not None:
            scores = np.where((pool >= 0) & allowed[np.maximum(pool, 0)], scores, -np.inf)
            pool = np.where(np.isfinite(scores), pool, -1)
        res = _best(pool, scores, size)
        if allowed is not None:
            n_ok = self.ntotal if rows_ok is None else len(rows_ok)
            short = np.flatnonzero((res.rows >= 0).sum(axis=1) < min(size, n_ok))
            if len(short):
                again = exact_subset(self.vectors, everything(), q[short], size)
                res.scores[short], res.rows[short] = again.scores, again.rows
        return res

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> SearchResult:
        q = np.ascontiguousarray(q, dtype=np.float32)
        rows_ok = None
        if allowed is not None:
            rows_ok = np.flatnonzero(allowed)
            if len(rows_ok) <= EXACT_SUBSET_MAX:  # exact, hence one ranking at any depth by itself
                return exact_subset(self.vectors, rows_ok, q, k)
        sizes = tier_sizes(k, first=self.first_tier, cap=self.depth_limit)
        pools = self._pools(q, sizes, allowed)
        lists = [self._tier(q, size, pool, allowed, rows_ok) for size, pool in zip(sizes, pools, strict=True)]
        return merge_tiers(lists, sizes, k)


class TorchCudaSearcher(Searcher):
    """Exact inner-product search in torch (the reference GPU figures' path, docs/PERFORMANCE.md): fp16 storage on CUDA, fp32 on
    CPU (the same class runs in CI with device="cpu"). `index/torch_search.py` scans the rows in
    chunks within `scratch_mb` and keeps fp32 top-k candidates on the device, filter masks stay on
    the device (cached by content); the best k + TIE_SLACK candidates get `rerank_exact` scores and
    order, so values, ids, ties and pages are the exact search's."""

    placement = "torch-cuda"

    def __init__(self, vectors: np.ndarray, device: str = "cuda", *, scratch_mb: float = 256,
                 mask_cache: int = 16, storage: Any = None):
        from index.torch_search import TorchExact

        super().__init__(vectors)
        self.engine = TorchExact(vectors, device, scratch_bytes=int(scratch_mb * 2**20), mask_cache=mask_cache,
                                 storage=storage)
        self.device = self.engine.device

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> SearchResult:
        q = np.ascontiguousarray(q, dtype=np.float32)
        cand = self.engine.topk_rows(q, k + TIE_SLACK, allowed)  # (B, <= k + slack), -1 past the matches
        return rerank_exact(self.vectors, q, cand, k)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.engine.describe()}


def gpu_params(index: faiss.Index, params: dict[str, Any] | None) -> dict[str, Any]:
    """Search parameters a faiss-gpu index accepts: nprobe at most GPU_MAX_K (also the one stored
    in the index file), so an index tuned or built for the CPU still places on a GPU."""
    out = dict(params or {})
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and int(out.get("nprobe", ivf.nprobe)) > GPU_MAX_K:
        log.warning("nprobe %s is above faiss-gpu's limit: %d lists are probed", out.get("nprobe", ivf.nprobe),
                    GPU_MAX_K)
        out["nprobe"] = GPU_MAX_K
        ivf.nprobe = GPU_MAX_K
    return out


class FaissGpuSearcher(FaissCpuSearcher):
    """faiss on all visible GPUs; filters by oversampling + post-filtering + exact refill. No faiss
    call asks for more than GPU_MAX_K rows: tiers stop there and deeper ones are exact scans."""

    placement = "faiss-gpu"
    oversample = 4
    depth_limit = GPU_MAX_K
    selector = False

    def __init__(self, index: faiss.Index, vectors: np.ndarray, params: dict[str, Any] | None = None,
                 shard: bool = False):
        params = gpu_params(index, params)
        # nprobe / efSearch are set on the CPU index, which the cloner copies to the GPU indexes:
        # faiss' CPU ParameterSpace does not reach into GPU indexes (GpuParameterSpace would).
        apply_params(index, params)
        co = faiss.GpuMultipleClonerOptions()
        co.useFloat16 = True
        # shard=False: every visible GPU holds a full replica (more QPS); True: the index is split
        # across them and each query goes to all shards (more capacity: an index too big for one GPU).
        co.shard = bool(shard)
        Searcher.__init__(self, vectors)
        self.index = faiss.index_cpu_to_all_gpus(index, co=co)
        self.params = params
        self.shard = bool(shard)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gpu_shard": self.shard}

    def _pool_depth(self, size: int, filtered: bool) -> int:
        factor = max(self.rerank, self.oversample if filtered else 0)
        return size * factor if factor else size + TIE_SLACK

    def _faiss(self, q: np.ndarray, depth: int, sel: Any, ef: int | None = None) -> np.ndarray:
        return self.index.search(q, min(depth, GPU_MAX_K))[1]  # nprobe was set before cloning


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
                  device: str = "auto", gpu_shard: bool = False, torch_scratch_mb: float = 256,
                  torch_mask_cache: int = 16) -> Searcher:
    placement = choose_placement(device, faiss_gpu_count(), cuda_available(), gpu_supported(index))
    if placement == "faiss-gpu":
        return FaissGpuSearcher(index, vectors, params, shard=gpu_shard)
    if placement == "torch-cuda":
        return TorchCudaSearcher(vectors, scratch_mb=torch_scratch_mb, mask_cache=torch_mask_cache)
    return FaissCpuSearcher(index, vectors, params)
