"""Exact re-ranking of product-quantised candidates (the `rerank` search parameter of PQ indexes)
against a naive reference, and what it buys: recall beyond the PQ plateau, also when tuned."""

from __future__ import annotations

import numpy as np
import pytest

from index.build import RERANK_FACTOR, apply_params, build_index
from index.search import FaissCpuSearcher, choose_placement, gpu_supported, rerank_exact
from index.tune import ann_recall, exact_topk, tune_search_params
from tests.index.test_tune import mixture


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, centres = mixture(6000, 32, seed=0)
    return x, mixture(300, 32, seed=1, centres=centres)[0], mixture(300, 32, seed=2, centres=centres)[0]


def test_rerank_equals_a_naive_rescoring_of_the_candidates() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(50, 8)).astype(np.float16)  # the index stores fp16 vectors
    q = rng.normal(size=(4, 8)).astype(np.float32)
    cand = rng.integers(0, 50, size=(4, 12))
    cand[1, 5:] = -1  # a short candidate list: padded with -1 / -inf
    res = rerank_exact(vectors, q, cand, k=6)
    for b in range(4):
        rows = [r for r in cand[b] if r >= 0]
        naive = sorted(rows, key=lambda r: -float(q[b] @ vectors[r].astype(np.float32)))[:6]
        got = [r for r in res.rows[b] if r >= 0]
        assert got == naive
        np.testing.assert_allclose(res.scores[b, :len(got)], [q[b] @ vectors[r].astype(np.float32) for r in got],
                                   rtol=1e-5)
    assert (res.rows[1, 5:] == -1).all() and np.isneginf(res.scores[1, 5:]).all()


def test_pq_indexes_rerank_and_beat_their_plateau(data) -> None:
    x, tune_q, test_q = data
    built = build_index(x, "IVF64,PQ8x4")  # 4 bytes per vector at d=32: a low recall plateau
    assert built.params["rerank"] == RERANK_FACTOR
    assert "rerank" not in build_index(x, "IVF64,Flat").params
    apply_params(built.index, {"nprobe": 64, "rerank": 8})  # the searcher's parameter is not faiss'
    kth = exact_topk(x, test_q, 10)[0][:, -1]
    plain = FaissCpuSearcher(built.index, x, {"nprobe": 64}).search(test_q, 10)
    reranked = FaissCpuSearcher(built.index, x, {"nprobe": 64, "rerank": 8}).search(test_q, 10)
    r_plain, r_rerank = ann_recall(x, test_q, plain.rows, kth), ann_recall(x, test_q, reranked.rows, kth)
    assert r_rerank > r_plain + 0.2, (r_plain, r_rerank)
    # Scores are exact and sorted after the re-rank.
    np.testing.assert_allclose(reranked.scores, np.einsum("qd,qkd->qk", test_q, x[reranked.rows]), rtol=1e-5)
    assert (np.diff(reranked.scores, axis=1) <= 1e-6).all()

    # The tuner measures what the searcher serves: with the re-rank the target becomes reachable.
    tuned = tune_search_params(built.index, x, tune_q, k=10, target=0.9, rerank=RERANK_FACTOR)
    assert tuned.reached, tuned.curve
    served = FaissCpuSearcher(built.index, x, {**tuned.params, "rerank": RERANK_FACTOR}).search(test_q, 10)
    assert ann_recall(x, test_q, served.rows, kth) >= 0.87


def test_filtered_pq_search_reranks_and_holds_k(data) -> None:
    x, _, test_q = data
    built = build_index(x, "IVF64,PQ8x4")
    allowed = np.zeros(len(x), dtype=bool)
    allowed[::2] = True
    import index.search as search_mod

    old = search_mod.EXACT_SUBSET_MAX
    search_mod.EXACT_SUBSET_MAX = 100  # force the IDSelector path (3,000 rows pass)
    try:
        res = FaissCpuSearcher(built.index, x, {"nprobe": 64, "rerank": 8}).search(test_q[:20], 10, allowed)
    finally:
        search_mod.EXACT_SUBSET_MAX = old
    assert (res.rows >= 0).all() and allowed[res.rows].all()
    np.testing.assert_allclose(res.scores, np.einsum("qd,qkd->qk", test_q[:20], x[res.rows]), rtol=1e-5)


def test_hnsw_is_never_placed_on_faiss_gpu(data) -> None:
    x, _, _ = data
    assert not gpu_supported(build_index(x[:500], "HNSW8,Flat").index)
    assert gpu_supported(build_index(x[:500], "Flat").index)
    assert choose_placement("auto", 1, True, gpu_index_ok=False) == "torch-cuda"
    assert choose_placement("cuda", 1, True, gpu_index_ok=False) == "torch-cuda"
    assert choose_placement("auto", 1, False, gpu_index_ok=False) == "faiss-cpu"
    assert choose_placement("auto", 1, True, gpu_index_ok=True) == "faiss-gpu"
    with pytest.raises(ValueError, match="HNSW"):
        choose_placement("faiss-gpu", 1, True, gpu_index_ok=False)


def test_faiss_gpu_replicates_by_default_and_shards_when_asked(data, monkeypatch) -> None:
    """The faiss-gpu cloning options, checked without a GPU: the cloner is replaced by a recorder."""
    import faiss

    import index.search as search_mod

    seen: list[bool] = []

    class Options:
        useFloat16 = False
        shard = False

    def clone(index, co=None):
        seen.append(co.shard)
        return index  # the CPU index stands in for the GPU copy

    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", Options, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", clone)
    monkeypatch.setattr(search_mod, "faiss_gpu_count", lambda: 2)
    x, _, q = data
    index = build_index(x[:1000], "Flat").index
    replicated = search_mod.make_searcher(index, x[:1000], {}, "auto")
    sharded = search_mod.make_searcher(index, x[:1000], {}, "auto", gpu_shard=True)
    assert seen == [False, True]
    # Search parameters reach the CPU index before it is cloned (the cloner carries them over).
    ivf = build_index(x, "IVF64,Flat").index
    search_mod.make_searcher(ivf, x, {"nprobe": 7}, "auto")
    assert faiss.extract_index_ivf(ivf).nprobe == 7
    assert replicated.placement == "faiss-gpu" and sharded.describe()["gpu_shard"] is True
    np.testing.assert_array_equal(sharded.search(q[:5], 10).rows, exact_topk(x[:1000], q[:5], 10)[1])
