"""The build-time tuner on clustered synthetic vectors: it reaches the target with the smallest
setting it tried, its recall curve rises with the knob, the chosen setting generalises to fresh
queries, and an index that cannot reach the target says so."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index.build import build_index
from index.search import FaissCpuSearcher
from index.tune import ann_recall, exact_topk, knob, tune_search_params


def mixture(n: int, d: int, seed: int, centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors from a Gaussian mixture (the structure real embeddings have; isotropic noise has none)."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = rng.normal(size=(48, d))
    x = centres[rng.integers(0, len(centres), n)] + 0.45 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), centres


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, centres = mixture(6000, 32, seed=0)
    tune_q, _ = mixture(300, 32, seed=1, centres=centres)  # queries: same mixture, never item vectors
    test_q, _ = mixture(300, 32, seed=2, centres=centres)
    return x, tune_q, test_q


def recall(index: faiss.Index, params: dict, x: np.ndarray, q: np.ndarray, k: int) -> float:
    res = FaissCpuSearcher(index, x, params).search(q, k)
    return ann_recall(x, q, res.rows, exact_topk(x, q, k)[0][:, -1])


@pytest.mark.parametrize(("key", "name", "target"), [
    ("IVF64,Flat", "nprobe", 0.9),
    ("HNSW16,Flat", "efSearch", 0.9),
    ("IVF64,PQ16x4", "nprobe", 0.45),  # 8 bytes per vector at d=32: the codes cap recall near 0.48
])
def test_tuner_reaches_the_target_with_the_smallest_setting(data, key: str, name: str, target: float) -> None:
    x, tune_q, test_q = data
    index = build_index(x, key).index
    res = tune_search_params(index, x, tune_q, k=10, target=target)
    assert res.reached and res.recall >= target and set(res.params) == {name}
    chosen = res.params[name]
    tried = {v: r for v, r, _ in res.curve}
    assert all(r < target for v, r in tried.items() if v < chosen), tried  # nothing cheaper reached it
    # monotone: recall does not fall as the knob grows (up to sampling noise)
    values = sorted(tried)
    assert all(tried[b] >= tried[a] - 0.01 for a, b in zip(values, values[1:], strict=False)), tried
    # the choice generalises to fresh queries from the same distribution, at serving time
    assert recall(index, res.params, x, test_q, 10) >= target - 0.03


def test_exact_index_needs_no_tuning(data) -> None:
    x, tune_q, _ = data
    res = tune_search_params(build_index(x, "Flat").index, x, tune_q)
    assert res.params == {} and res.recall == 1.0 and res.reached and res.curve == ()


def test_unreachable_target_keeps_the_cheapest_best_setting(data) -> None:
    x, tune_q, _ = data
    index = build_index(x, "IVF64,PQ4x4").index  # 2 bytes per vector: far too coarse for 0.999
    res = tune_search_params(index, x, tune_q, k=10, target=0.999)
    assert not res.reached
    best = max(r for _, r, _ in res.curve)
    assert res.recall >= best - 0.002
    assert res.params["nprobe"] == min(v for v, r, _ in res.curve if r >= best - 0.002)


def test_recall_measure_counts_ties_and_misses() -> None:
    x = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)  # rows 0 and 1 tie
    q = np.array([[1, 0]], dtype=np.float32)
    kth = exact_topk(x, q, 2)[0][:, -1]
    assert ann_recall(x, q, np.array([[1, 0]]), kth) == 1.0  # the tie counts
    assert ann_recall(x, q, np.array([[0, 2]]), kth) == 0.5
    assert ann_recall(x, q, np.array([[0, -1]]), kth) == 0.5  # a missing row is a miss


def test_exact_topk_in_chunks_equals_one_pass(data) -> None:
    x, q, _ = data
    s1, r1 = exact_topk(x, q[:20], 7)
    s2, r2 = exact_topk(x, q[:20], 7, chunk=1000)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)


def test_knob_and_bad_inputs(data) -> None:
    x, q, _ = data
    assert knob(build_index(x[:500], "Flat").index) is None
    assert knob(build_index(x, "IVF64,Flat").index) == ("nprobe", 1, 64)
    index = build_index(x, "IVF64,Flat").index
    with pytest.raises(ValueError, match="target ANN recall"):
        tune_search_params(index, x, q, target=1.5)
    with pytest.raises(ValueError, match="tuning queries"):
        tune_search_params(index, x, q[:, :8])


def test_split_is_seeded_disjoint_and_complete() -> None:
    from index.tune import split_queries

    tune, check = split_queries(101, seed=5)
    assert len(tune) + len(check) == 101 and not set(tune) & set(check) and len(check) == 50
    again, _ = split_queries(101, seed=5)
    other, _ = split_queries(101, seed=6)
    assert np.array_equal(tune, again) and not np.array_equal(tune, other)
    assert [len(p) for p in split_queries(1, seed=0)] == [1, 0]  # nothing to hold back


def test_tune_and_check_measures_recall_on_the_other_part(data) -> None:
    from index.tune import measure_recall, split_queries, tune_and_check

    x, tune_q, test_q = data
    q = np.vstack([tune_q, test_q])  # (600, d)
    index = build_index(x, "IVF64,Flat").index
    res = tune_and_check(index, x, q, k=10, target=0.9, seed=1)
    tune_rows, check_rows = split_queries(len(q), seed=1)
    assert res.tuned.n_queries == len(tune_rows) and res.n_check == len(check_rows)
    assert res.tuned.recall == measure_recall(index, x, q[tune_rows], 10) >= 0.9
    assert res.check_recall == measure_recall(index, x, q[check_rows], 10)
    assert res.to_dict()["check"] == {"recall": res.check_recall, "n_queries": len(check_rows), "seed": 1,
                                      "share": 0.5}
