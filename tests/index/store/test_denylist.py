"""The deny-list file (atomic, lock-protected updates) and its application to a search (oversample
and drop, or a row mask), against brute force."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from index.build import build_index
from index.search import FaissCpuSearcher
from index.store import denylist
from index.store.denylist import DenyRows


def test_update_read_and_stamp(tmp_path: Path) -> None:
    path = denylist.denylist_path(tmp_path)
    assert denylist.read_ids(path) == frozenset() and denylist.stamp(path) is None
    assert denylist.update(path, add=["L2", " L1 ", "L2"]) == {"L1", "L2"}
    first = denylist.stamp(path)
    assert path.read_text() == "L1\nL2\n"
    assert denylist.update(path, add=["L3"], remove=["L1", "nope"]) == {"L2", "L3"}
    assert denylist.read_ids(path) == {"L2", "L3"} and denylist.stamp(path) != first
    assert not list(tmp_path.glob(".denylist.txt.*.tmp"))
    for bad in ("", "a\nb", "x" * 300):
        with pytest.raises(ValueError, match="deny-list id"):
            denylist.update(path, add=[bad])


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = denylist.denylist_path(tmp_path)

    def add(worker: int) -> None:
        for i in range(15):
            denylist.update(path, add=[f"w{worker}-{i}"])

    threads = [threading.Thread(target=add, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(denylist.read_ids(path)) == 60


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16))
    x = centres[rng.integers(0, 8, 2000)] + 0.4 * rng.normal(size=(2000, 16))
    q = centres[rng.integers(0, 8, 12)] + 0.4 * rng.normal(size=(12, 16))
    norm = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return norm(x), norm(q)


def brute(x: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray) -> np.ndarray:
    s = q @ x.T
    s[:, ~allowed] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("n_denied", [0, 3, 40, denylist.OVERSAMPLE_MAX + 1])
@pytest.mark.parametrize("filtered", [False, True])
def test_denied_rows_never_come_back_and_k_is_kept(data, n_denied: int, filtered: bool) -> None:
    x, q = data
    k = 10
    searcher = FaissCpuSearcher(build_index(x, "Flat").index, x)
    # deny the rows the queries like best, so dropping them matters
    top = np.unique(brute(x, q, 60, np.ones(len(x), bool)).ravel())
    rng = np.random.default_rng(1)
    pool = np.union1d(top, rng.choice(len(x), 1500, replace=False)) if n_denied > len(top) else top
    denied = np.sort(rng.choice(pool, min(n_denied, len(pool)), replace=False)) if n_denied else np.empty(0, np.int64)
    deny = DenyRows(denied.astype(np.int64), len(x))
    flt = (np.arange(len(x)) % 3 == 0) if filtered else None
    mask, extra = deny.plan(flt)
    assert len(denied) == n_denied
    if n_denied and not filtered and n_denied <= denylist.OVERSAMPLE_MAX:
        assert mask is None and extra == n_denied  # the unfiltered fast path is kept
    elif n_denied:
        assert extra == 0 and mask is not None and not mask[denied].any()
    res = searcher.search(q, k + extra, mask)
    if extra:
        res = deny.drop(res, k)
    allowed = np.ones(len(x), bool) if flt is None else flt.copy()
    allowed[denied] = False
    assert res.rows.shape == (len(q), k) and np.all(res.rows >= 0)
    assert not np.isin(res.rows, denied).any()
    np.testing.assert_array_equal(res.rows, brute(x, q, k, allowed))


def test_none_is_a_no_op() -> None:
    mask = np.array([True, False])
    out, extra = DenyRows.none(2).plan(mask)
    assert out is mask and extra == 0 and len(DenyRows.none(5)) == 0
