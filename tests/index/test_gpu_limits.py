"""faiss-gpu's k-selection limit (GPU_MAX_K: k and nprobe at most 2048), checked without a GPU: the
cloner hands back a recording fake that refuses what faiss-gpu refuses. The PQ re-rank pool
(rerank * k), the filtered oversample and deny-list refills never ask it for more; deeper tiers are
exact scans; nprobe is clamped at placement and never tuned above the limit (issue 15, item 4)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

import index.search as search_mod
import index.tune as tune_mod
from index.build import RERANK_FACTOR, build_index
from index.search import GPU_MAX_K, FaissCpuSearcher, exact_scores, tier_sizes
from index.tune import exact_topk, knob, tune_search_params
from tests.index.test_tune import mixture


class RecordingGpuIndex:
    """Stands in for the GPU copy of a CPU index: records (queries, k, nprobe) of every search and
    raises, as faiss-gpu does, when k or nprobe is above GPU_MAX_K."""

    def __init__(self, cpu: faiss.Index):
        self.cpu, self.d, self.ntotal = cpu, cpu.d, cpu.ntotal
        self.calls: list[tuple[int, int, int]] = []

    def search(self, q: np.ndarray, k: int, params=None):
        ivf = faiss.try_extract_index_ivf(self.cpu)
        nprobe = int(ivf.nprobe) if ivf is not None else 0
        self.calls.append((len(q), int(k), nprobe))
        if k > GPU_MAX_K or nprobe > GPU_MAX_K:
            raise RuntimeError(f"faiss-gpu: k {k} / nprobe {nprobe} above {GPU_MAX_K}")
        return self.cpu.search(q, k)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, centres = mixture(6000, 16, seed=0)
    return x, mixture(6, 16, seed=1, centres=centres)[0]


@pytest.fixture
def gpu(monkeypatch):
    """make_searcher(..., 'auto') places on a fake faiss-gpu; -> the list of fakes it cloned."""
    fakes: list[RecordingGpuIndex] = []

    class Options:
        useFloat16 = False
        shard = False

    def clone(index, co=None):
        fakes.append(RecordingGpuIndex(index))
        return fakes[-1]

    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", Options, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", clone, raising=False)
    monkeypatch.setattr(search_mod, "faiss_gpu_count", lambda: 1)
    return fakes


def test_the_limit_is_faiss_gpus_and_a_tier_of_its_own() -> None:
    assert GPU_MAX_K == 2048
    assert tier_sizes(10) == [10]
    assert tier_sizes(1500, cap=GPU_MAX_K) == [10, 20, 40, 80, 160, 320, 640, 1280, 2048]
    assert tier_sizes(3000, cap=GPU_MAX_K)[-3:] == [2048, 2560, 5120]


@pytest.mark.parametrize("k", [10, 300, 1500, 2600])  # PQ pool 8k: 80, 2400, 12000, 20800 rows
def test_pq_rerank_deep_pages_and_filters_never_exceed_the_limit(data, gpu, k: int) -> None:
    x, q = data
    built = build_index(x, "IVF64,PQ4x4")
    params = {**built.params, "nprobe": 16}
    assert params["rerank"] == RERANK_FACTOR
    s = search_mod.make_searcher(built.index, x, params, "auto")
    assert s.placement == "faiss-gpu"
    allowed = np.zeros(len(x), bool)
    allowed[::3] = True
    old_max = search_mod.EXACT_SUBSET_MAX
    search_mod.EXACT_SUBSET_MAX = 100  # the oversample + post-filter path, not the exact subset
    try:
        for mask in (None, allowed):
            res = s.search(q, k, mask)
            got = res.rows >= 0
            if mask is not None:  # oversampled, post-filtered, refilled exactly: k whenever k match
                assert (got.sum(axis=1) == min(k, int(allowed.sum()))).all()
            assert all(len(set(r[r >= 0])) == int((r >= 0).sum()) for r in res.rows)  # no duplicates
            if mask is not None:
                assert allowed[res.rows[got]].all()
            np.testing.assert_array_equal(res.scores[got], exact_scores(x, q, res.rows)[got])
            half = s.search(q, k // 2, mask).rows  # the same ranking at half the depth
            np.testing.assert_array_equal(half, res.rows[:, :k // 2])
    finally:
        search_mod.EXACT_SUBSET_MAX = old_max
    assert gpu[0].calls and max(c[1] for c in gpu[0].calls) <= GPU_MAX_K


def test_flat_on_gpu_beyond_the_limit_is_exact(data, gpu) -> None:
    x, q = data
    s = search_mod.make_searcher(build_index(x, "Flat").index, x, {}, "auto")
    res = s.search(q, 2600)  # tiers past 2048 come from the exact scan
    np.testing.assert_array_equal(res.rows, exact_topk(x, q, 2600)[1])
    assert max(c[1] for c in gpu[0].calls) <= GPU_MAX_K


def test_nprobe_is_clamped_on_gpu_and_never_tuned_above_the_limit(data, gpu, monkeypatch) -> None:
    x, q = data
    ivf = build_index(x, "IVF64,Flat").index
    s = search_mod.make_searcher(ivf, x, {"nprobe": 3000}, "auto")
    s.search(q, 10)
    assert s.params["nprobe"] == GPU_MAX_K and max(c[2] for c in gpu[0].calls) <= GPU_MAX_K
    # the same parameters on the CPU are left alone
    assert FaissCpuSearcher(build_index(x, "IVF64,Flat").index, x, {"nprobe": 3000}).params["nprobe"] == 3000
    # the tuner's range stops at the limit (an untrained IVF with 5,000 lists needs no data)
    big = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 5000, faiss.METRIC_INNER_PRODUCT)
    assert knob(big) == ("nprobe", 1, GPU_MAX_K)
    monkeypatch.setattr(tune_mod, "GPU_MAX_K", 4)  # a limit below what the target needs
    tuned = tune_search_params(build_index(x, "IVF64,Flat").index, x, q, k=10, target=1.0)
    assert tuned.params["nprobe"] <= 4 and max(v for v, _, _ in tuned.curve) <= 4
