"""Index search against exact brute force: unfiltered, filtered (exact-subset and IDSelector
paths), post-filter refill; placement selection without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from index import search as search_mod
from index.build import build_index, choose_index_key
from index.filters import Filter, FilterColumns
from index.search import FaissCpuSearcher, choose_placement, post_filter


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few centres (isotropic noise makes ANN meaningless)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(16, d))
    x = centres[rng.integers(0, 16, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(x: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    s = q @ x.T
    if allowed is not None:
        s[:, ~allowed] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(s, order, 1) > -np.inf, order, -1)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x = clustered(3000, 32)
    q = clustered(20, 32, seed=1)
    return x, q


def test_flat_equals_brute_force(data) -> None:
    x, q = data
    built = build_index(x, "Flat")
    res = FaissCpuSearcher(built.index, x).search(q, 10)
    np.testing.assert_array_equal(res.rows, brute(x, q, 10))
    assert res.scores.shape == (20, 10) and np.all(np.diff(res.scores, axis=1) <= 1e-6)


@pytest.mark.parametrize("selectivity", [0.002, 0.02, 0.5])
@pytest.mark.parametrize("key", ["Flat", "HNSW16,Flat", "IVF16,Flat"])
def test_filtered_search_matches_brute_force(data, key: str, selectivity: float, monkeypatch) -> None:
    x, q = data
    rng = np.random.default_rng(2)
    allowed = rng.random(len(x)) < selectivity
    # force the IDSelector path for the middle case, the exact-subset path for the others
    monkeypatch.setattr(search_mod, "EXACT_SUBSET_MAX", 20 if selectivity == 0.02 else 50_000)
    built = build_index(x, key)
    params = {"nprobe": 16} if key.startswith("IVF") else {"efSearch": 512} if key.startswith("HNSW") else {}
    res = FaissCpuSearcher(built.index, x, params).search(q, 10, allowed)
    want = brute(x, q, 10, allowed)
    assert np.all(allowed[res.rows[res.rows >= 0]])
    n_ok = int(allowed.sum())
    assert np.all((res.rows >= 0).sum(1) == min(10, n_ok))  # k results whenever k rows match
    overlap = np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, min(10, n_ok)) for a, b in zip(res.rows, want, strict=True)])
    assert overlap >= (1.0 if key == "Flat" else 0.9)


def test_post_filter_refills_when_too_few_survive(data) -> None:
    x, q = data
    allowed = np.zeros(len(x), bool)
    allowed[:7] = True
    raw = (np.zeros((len(q), 5), np.float32), np.tile(np.arange(100, 105), (len(q), 1)))  # no survivors
    calls = []

    def refill(missing):
        calls.append(len(missing))
        return search_mod.exact_subset(x, np.flatnonzero(allowed), q[missing], 5)

    res = post_filter(raw, allowed, 5, refill)
    assert calls == [len(q)]
    np.testing.assert_array_equal(res.rows, brute(x, q, 5, allowed))


def test_k_larger_than_the_catalog_pads_with_minus_one(data) -> None:
    x, q = data
    small = x[:5]
    res = FaissCpuSearcher(build_index(small, "Flat").index, small).search(q[:2], 8)
    assert (res.rows[:, 5:] == -1).all() and np.isneginf(res.scores[:, 5:]).all()


def test_filter_columns_mask() -> None:
    cols = FilterColumns.from_rows(
        ["Mug", "mug ", "Scarf", None],
        [10.0, None, 30.0, 5.0],
        [{"Color": "Red"}, {"color": "blue"}, {"color": "red", "pattern": "striped"}, {}],
    )
    m = lambda **kw: cols.mask(Filter.build(**kw)).tolist()  # noqa: E731
    assert cols.mask(Filter()) is None
    assert m(categories=["MUG"]) == [True, True, False, False]
    assert m(attributes={"color": "red"}) == [True, False, True, False]
    assert m(attributes={"color": ["red", "blue"], "pattern": "striped"}) == [False, False, True, False]
    assert m(price_min=6, price_max=20) == [True, False, False, False]  # unknown price never matches
    assert m(categories=["nothing"]) == [False] * 4
    with pytest.raises(ValueError, match="min 5 is greater than max 1"):
        Filter.build(price_min=5, price_max=1)


@pytest.mark.parametrize(
    ("requested", "gpus", "cuda", "want"),
    [
        ("auto", 1, True, "faiss-gpu"),
        ("auto", 0, True, "torch-cuda"),
        ("auto", 0, False, "faiss-cpu"),
        ("cpu", 2, True, "faiss-cpu"),
        ("cuda", 0, True, "torch-cuda"),
        ("torch-cuda", 1, True, "torch-cuda"),
    ],
)
def test_placement_selection(requested: str, gpus: int, cuda: bool, want: str) -> None:
    assert choose_placement(requested, gpus, cuda) == want


@pytest.mark.parametrize(("requested", "gpus", "cuda"), [("cuda", 0, False), ("faiss-gpu", 0, True),
                                                         ("torch-cuda", 0, False), ("tpu", 0, False)])
def test_placement_refuses_what_is_not_there(requested: str, gpus: int, cuda: bool) -> None:
    with pytest.raises(ValueError, match="index_device"):
        choose_placement(requested, gpus, cuda)


def test_choose_index_key_by_size_and_budget() -> None:
    assert choose_index_key(10_000, 256) == "Flat"
    assert choose_index_key(1_000_000, 256).startswith("HNSW")
    assert "PQ" in choose_index_key(20_000_000, 256)
    assert "PQ" in choose_index_key(1_000_000, 256, memory_budget_bytes=200e6)
    with pytest.raises(ValueError):
        build_index(np.zeros((4, 8), np.float32), "NotAKey")
