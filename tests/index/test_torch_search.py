"""The torch exact searcher (`TorchCudaSearcher`) on CPU torch against exact numpy search: values,
ids, tie order, filters, deny-list, pages and batch independence; chunking within the scratch budget
and masks kept on the device (issue 15, item 5). The CUDA test is marked `gpu` and skips on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from index.search import TorchCudaSearcher, exact_scores
from index.store.denylist import DenyRows
from index.torch_search import TorchExact

CUDA = torch.cuda.is_available()


def stored(n: int, d: int, seed: int = 0, dupes: int = 40) -> np.ndarray:
    """fp16 unit vectors as vectors.npy holds them, with `dupes` exact duplicates (ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d))
    x = centres[rng.integers(0, 8, n)] + 0.4 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[n - dupes:] = x[:dupes]  # listings posted twice: equal scores, ordered by row
    return x.astype(np.float16)


def queries(b: int, d: int, seed: int = 1) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(b, d))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact(x: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Naive reference: every row scored, score desc then row asc, -1 / -inf past the matches."""
    rows = np.broadcast_to(np.arange(len(x)), (len(q), len(x)))  # (B, n)
    s = exact_scores(x, q, rows)  # (B, n)
    if allowed is not None:
        s = np.where(allowed[None, :], s, -np.inf)
    order = np.lexsort((rows, -s), axis=1)[:, :k]
    top_s = np.take_along_axis(s, order, 1)
    return np.where(top_s > -np.inf, order, -1), top_s.astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return stored(3000, 32), queries(12, 32)


def check(res, want_rows: np.ndarray, want_scores: np.ndarray) -> None:
    np.testing.assert_array_equal(res.rows, want_rows)
    np.testing.assert_array_equal(res.scores, want_scores)


@pytest.mark.parametrize("storage", [None, torch.float16])  # fp32 on CPU; the fp16 storage's cast path
def test_matches_exact_numpy_values_ids_and_ties(data, storage) -> None:
    x, q = data
    s = TorchCudaSearcher(x, device="cpu", storage=storage)
    assert s.engine.mode == ("fp32" if storage is None else "fp16-cast-fp32")
    q_dup = np.vstack([q, x[:3].astype(np.float32)])  # a stored vector as query: its duplicate ties it
    res = s.search(q_dup, 10)
    check(res, *exact(x, q_dup, 10))
    assert res.rows[-1, 0] == 2 and res.rows[-1, 1] == 3000 - 40 + 2  # tie: lower row first
    assert res.scores.dtype == np.float32 and len(np.unique(res.scores[:12])) > 12 * 9  # fp32, not a fp16 grid


def test_filters_deny_list_and_short_results(data) -> None:
    x, q = data
    s = TorchCudaSearcher(x, device="cpu")
    rng = np.random.default_rng(3)
    for share in (0.5, 0.01, 0.0):
        allowed = rng.random(len(x)) < share
        allowed[:2] = share > 0  # 0.01 leaves about 30 rows; 0.0 none
        check(s.search(q, 40, allowed), *exact(x, q, 40, allowed))
    few = np.zeros(len(x), dtype=bool)
    few[[5, 900, 2999]] = True  # fewer rows than k: -1 / -inf padding
    res = s.search(q, 10, few)
    check(res, *exact(x, q, 10, few))
    assert (res.rows[:, 3:] == -1).all() and np.isneginf(res.scores[:, 3:]).all()
    # the deny-list: a mask when there is a filter, oversample-and-drop without one
    top = exact(x, q, 5)[0]
    deny = DenyRows(np.unique(top[:, :2]), len(x))
    cat = rng.random(len(x)) < 0.3
    mask, extra = deny.plan(cat)
    assert extra == 0
    want = cat.copy()
    want[deny.rows] = False
    check(s.search(q, 10, mask), *exact(x, q, 10, want))
    mask, extra = deny.plan(None)
    got = deny.drop(s.search(q, 10 + extra, mask), 10)
    allowed = np.ones(len(x), dtype=bool)
    allowed[deny.rows] = False
    check(got, *exact(x, q, 10, allowed))


def test_pages_and_batch_independence(data) -> None:
    x, q = data
    s = TorchCudaSearcher(x, device="cpu", scratch_mb=0.05)
    deep = s.search(q, 60)
    for k in (10, 20, 35):
        shallow = s.search(q, k)
        check(shallow, deep.rows[:, :k], deep.scores[:, :k])  # page 2 continues page 1's ranking
    for i in (0, 7):
        alone = s.search(q[i:i + 1], 60)
        check(alone, deep.rows[i:i + 1], deep.scores[i:i + 1])


def test_chunks_stay_within_the_scratch_budget(data) -> None:
    x, q = data
    small = TorchExact(x, "cpu", scratch_bytes=64 << 10)  # 64 KiB: forces query blocks and row chunks
    block, rows = small.plan(len(q), 18)
    assert rows < len(x) and block * rows * 8 <= 64 << 10
    got = small.topk_rows(q, 18)
    assert small.last_chunks == -(-len(x) // rows) > 1
    big = TorchExact(x, "cpu")
    np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(big.topk_rows(q, 18), axis=1))  # ties: any order
    assert big.last_chunks == 1
    # 1,024 queries x 1M rows fits the default 256 MiB in chunks, never a (B, n) matrix
    fake = object.__new__(TorchExact)
    fake.n, fake.d, fake.mixed, fake.storage, fake.scratch_bytes = 1_000_000, 256, True, torch.float16, 256 << 20
    block, rows = fake.plan(1024, 110)
    assert block == 1024 and rows < 1_000_000 and 12 * block * rows <= 256 << 20


def test_masks_stay_on_the_device_cached_by_content(data) -> None:
    x, q = data
    s = TorchCudaSearcher(x, device="cpu", mask_cache=2)
    rng = np.random.default_rng(4)
    a, b, c = (rng.random(len(x)) < p for p in (0.3, 0.5, 0.7))
    s.search(q, 10, a)
    s.search(q, 10, a.copy())  # the same filter, a fresh array (as FilterColumns.mask builds it)
    assert s.engine.masks.uploads == 1
    s.search(q, 10, b)
    s.search(q, 10, c)  # evicts a (capacity 2)
    assert s.engine.masks.uploads == 3 and len(s.engine.masks) == 2
    check(s.search(q, 10, a), *exact(x, q, 10, a))
    assert s.engine.masks.uploads == 4
    assert s.describe()["masks_cached"] == 2 and s.describe()["placement"] == "torch-cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_fp16_storage_matches_exact_numpy() -> None:
    x, q = stored(50_000, 64, seed=5), queries(33, 64, seed=6)
    s = TorchCudaSearcher(x, device="cuda", scratch_mb=4)
    assert s.engine.matrix.dtype == torch.float16 and s.engine.mode in ("fp16-split-fp32", "fp16-cast-fp32")
    check(s.search(q, 100), *exact(x, q, 100))
    allowed = np.random.default_rng(7).random(len(x)) < 0.2
    check(s.search(q, 10, allowed), *exact(x, q, 10, allowed))
    assert s.engine.last_chunks > 1
