"""Filtered search holds k listings whenever k match, for every index family (IVF-PQ included) and
for rare categories, checked against brute-force filtered search; the IDSelector path refills
queries an IVF probe or HNSW walk left short; the faiss-gpu filter logic (oversample, post-filter,
refill) runs here on a CPU index; pages at increasing offsets continue one ranking."""

from __future__ import annotations

import numpy as np
import pytest

from index import search as search_mod
from index.build import RERANK_FACTOR, build_index
from index.filters import Filter, FilterColumns
from index.search import FaissCpuSearcher, FaissGpuSearcher, exact_scores, exact_subset

FAMILIES = {  # key -> search params (deliberately narrow: refills must make up for them)
    "Flat": {},
    "HNSW16,Flat": {"efSearch": 16},
    "IVF32,Flat": {"nprobe": 2},
    "IVF32,PQ8x4": {"nprobe": 2},
}
# Overlap with the exact filtered top-k that each family must reach where faiss answers (the exact
# subset and refill paths are exact); PQ ranks by 4-byte codes, so its bar is lower.
MIN_OVERLAP = {"Flat": 1.0, "HNSW16,Flat": 0.8, "IVF32,Flat": 0.8, "IVF32,PQ8x4": 0.3}


def mixture(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(24, d))
    x = centres[rng.integers(0, 24, n)] + 0.5 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(x: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    s = q @ x.T
    if allowed is not None:
        s[:, ~allowed] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(s, order, 1) > -np.inf, order, -1)


@pytest.fixture(scope="module")
def catalog() -> dict:
    n = 4000
    x = mixture(n, 32, seed=0)
    q = mixture(24, 32, seed=1)
    rng = np.random.default_rng(3)
    # categories from common to very rare: 'rare' has 4 listings, fewer than k
    sizes = {"common": 2400, "mid": 1200, "small": 300, "tiny": 60, "few": 12}
    cats = np.concatenate([[c] * m for c, m in sizes.items()] + [["rare"] * (n - sum(sizes.values()))])
    rng.shuffle(cats)
    cols = FilterColumns.from_rows(list(cats), [float(p) for p in rng.uniform(1, 100, n)], [{}] * n)
    indexes = {key: build_index(x, key).index for key in FAMILIES}
    return {"x": x, "q": q, "cols": cols, "indexes": indexes}


@pytest.mark.parametrize("key", list(FAMILIES))
@pytest.mark.parametrize("category", ["common", "mid", "small", "tiny", "few", "rare"])
@pytest.mark.parametrize("exact_subset_max", [50_000, 100])  # the exact-subset path; the IDSelector path
def test_filtered_results_hold_k_and_match_brute_force(catalog, key: str, category: str, exact_subset_max: int,
                                                        monkeypatch) -> None:
    monkeypatch.setattr(search_mod, "EXACT_SUBSET_MAX", exact_subset_max)
    x, q, k = catalog["x"], catalog["q"], 10
    allowed = catalog["cols"].mask(Filter.build(categories=[category]))
    res = FaissCpuSearcher(catalog["indexes"][key], x, FAMILIES[key]).search(q, k, allowed)
    want = brute(x, q, k, allowed)
    n_ok = int(allowed.sum())
    assert np.all((res.rows >= 0).sum(axis=1) == min(k, n_ok)), (key, category)  # k whenever k match
    assert np.all(allowed[res.rows[res.rows >= 0]])
    assert all(len(set(r[r >= 0])) == len(r[r >= 0]) for r in res.rows)  # no duplicates
    overlap = np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / min(k, n_ok) for a, b in zip(res.rows, want, strict=True)])
    exact_path = n_ok <= exact_subset_max
    assert overlap >= (1.0 if exact_path else MIN_OVERLAP[key]), (key, category, overlap)


def test_idselector_path_refills_queries_left_short(catalog, monkeypatch) -> None:
    """nprobe=1 over 32 lists with a 1.5%-selective filter: most probes find < k allowed rows."""
    monkeypatch.setattr(search_mod, "EXACT_SUBSET_MAX", 10)
    x, q = catalog["x"], catalog["q"]
    allowed = catalog["cols"].mask(Filter.build(categories=["tiny"]))
    index = catalog["indexes"]["IVF32,Flat"]
    raw = FaissCpuSearcher(index, x, {"nprobe": 1})
    bitmap = np.packbits(allowed, bitorder="little")
    import faiss

    sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
    _, plain = index.search(q, 10, params=faiss.SearchParametersIVF(sel=sel, nprobe=1))
    assert ((plain >= 0).sum(axis=1) < 10).any()  # without the refill some queries come back short
    res = raw.search(q, 10, allowed)
    assert np.all((res.rows >= 0).sum(axis=1) == 10)


@pytest.mark.parametrize("category", ["common", "tiny", "rare"])
def test_gpu_filter_logic_on_a_cpu_index(catalog, category: str, monkeypatch) -> None:
    """FaissGpuSearcher.search (oversample x4, post-filter, exact refill) over a CPU index."""
    monkeypatch.setattr(search_mod, "EXACT_SUBSET_MAX", 10)
    x, q = catalog["x"], catalog["q"]
    allowed = catalog["cols"].mask(Filter.build(categories=[category]))
    s = object.__new__(FaissGpuSearcher)
    FaissCpuSearcher.__init__(s, catalog["indexes"]["Flat"], x, {})
    res = s.search(q, 10, allowed)
    np.testing.assert_array_equal(res.rows, brute(x, q, 10, allowed))


@pytest.mark.parametrize("key", ["Flat", "IVF32,Flat", "IVF32,PQ8x4", "HNSW16,Flat"])
@pytest.mark.parametrize("category", [None, "mid", "tiny"])
def test_pages_continue_one_ranking(catalog, key: str, category: str | None, monkeypatch) -> None:
    """Page p (offset p*k, searched at depth (p+1)*k as the engine does) == rows [p*k, (p+1)*k)
    of the deepest search, as served (IVF-PQ with its exact re-rank; HNSW deeper than efSearch;
    depths crossing several tiers, index/search.py DEPTH_BASE)."""
    monkeypatch.setattr(search_mod, "EXACT_SUBSET_MAX", 100)  # 'mid' goes through the IDSelector
    x, q, k, pages = catalog["x"], catalog["q"], 25, 6
    params = {**FAMILIES[key], "rerank": RERANK_FACTOR} if "PQ" in key else FAMILIES[key]
    searcher = FaissCpuSearcher(catalog["indexes"][key], x, params)
    allowed = None if category is None else catalog["cols"].mask(Filter.build(categories=[category]))
    deep = searcher.search(q, k * pages, allowed).rows
    for p in range(pages):
        page = searcher.search(q, k * (p + 1), allowed).rows[:, p * k:(p + 1) * k]
        np.testing.assert_array_equal(page, deep[:, p * k:(p + 1) * k], err_msg=f"{key} page {p}")


def test_exact_subset_in_chunks_equals_one_pass(catalog) -> None:
    x, q = catalog["x"], catalog["q"]
    rows = np.flatnonzero(catalog["cols"].mask(Filter.build(categories=["common", "small"])))
    one = exact_subset(x, rows, q, 12)
    chunked = exact_subset(x, rows, q, 12, chunk=100)
    np.testing.assert_array_equal(one.rows, chunked.rows)
    np.testing.assert_array_equal(one.rows, brute(x, q, 12, np.isin(np.arange(len(x)), rows)))
    fp16 = exact_subset(x.astype(np.float16), rows, q, 12, chunk=333)
    assert np.mean(fp16.rows == one.rows) > 0.95  # the stored fp16 vectors rank almost identically


@pytest.mark.parametrize("key", list(FAMILIES))
def test_a_listing_scores_the_same_on_every_path(catalog, key: str, monkeypatch) -> None:
    """fp16 stored vectors beside an fp32 index (as the pipeline writes them): unfiltered, the
    exact-subset path and the IDSelector path give a listing the same score, bit for bit."""
    x16, q = catalog["x"].astype(np.float16), catalog["q"]
    params = {**FAMILIES[key], "rerank": RERANK_FACTOR} if "PQ" in key else FAMILIES[key]
    searcher = FaissCpuSearcher(catalog["indexes"][key], x16, params)
    allowed = catalog["cols"].mask(Filter.build(categories=["common", "mid"]))
    plain = searcher.search(q, 30)
    runs = [plain]
    for limit in (50_000, 100):  # the exact subset, then the IDSelector
        monkeypatch.setattr(search_mod, "EXACT_SUBSET_MAX", limit)
        runs.append(searcher.search(q, 30, allowed))
    seen = 0
    for b in range(len(q)):
        first: dict[int, float] = {}
        for res in runs:
            for r, s in zip(res.rows[b], res.scores[b], strict=True):
                if r >= 0:
                    assert first.setdefault(int(r), float(s)) == float(s), (key, b, int(r))
                    seen += 1
        rows = np.array(sorted(first))
        np.testing.assert_array_equal(exact_scores(x16, q[b:b + 1], rows[None])[0], [first[r] for r in rows])
    assert seen > len(q) * 60


def test_price_bounds_past_float32_range_do_not_overflow() -> None:
    import warnings

    from index.filters import Filter, FilterColumns

    cols = FilterColumns.from_rows(["a", "b", "c"], [1.0, 3.0e38, None], [{}, {}, {}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cols.mask(Filter.build(price_min=1e300)).tolist() == [False, False, False]
        assert cols.mask(Filter.build(price_max=1e300)).tolist() == [True, True, False]
        assert cols.mask(Filter.build(price_min=2.0, price_max=1e300)).tolist() == [False, True, False]
