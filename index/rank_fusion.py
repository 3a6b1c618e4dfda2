"""Fusing a dense and a lexical ranking of one query into one list (hybrid retrieval).

Two methods, both a setting and a per-request option:

- `rrf`, reciprocal-rank fusion (Cormack et al. 2009): score(d) = sum over lists of
  w_list / (rrf_k + rank_list(d)), ranks from 1, a list that misses d adds nothing. Ranks only, so
  BM25's unbounded scores and cosines never need calibrating against each other.
- `weighted`, score fusion: every candidate (the union of both lists) gets BOTH its exact scores
  (cosine from the version's vectors, BM25 from the lexical index), each min-max normalised over
  the candidates, then w_dense * dense + w_lexical * lexical. A signal that is constant over the
  candidates normalises to 1 where it is positive, else 0.

Exact identifiers: a query token that mixes letters and digits and few listings hold ("TR-174",
"HY198"; index/lexical.py `identifier_matches`) is a model number the shopper typed; the listings
that hold it are ranked first, by how many of the query's identifiers they hold, then by their
fused score: each identifier held adds twice the largest fused score the method can give (`boost`),
so a cosine near an exact model number cannot bury it (FusionSpec.identifier_boost turns it off).

Ties go to the lower row, so a ranking never depends on the order of a batch. `hybrid_one` is the
whole per-query step the engine and the evaluation share: cut both lists to the candidate depth,
look up the missing scores, fuse. Pages deeper than the candidates are fused in tiers (candidates,
2x, 4x, ...; index/search.py `tier_sizes`): tier t fuses both lists cut to its depth and adds its
best listings not placed by an earlier tier, so every page of a query reads one fused ranking (a
listing's fused score is that of the tier that placed it; the first tier is the usual fusion).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from index.search import tier_sizes

MODES = ("dense", "lexical", "hybrid")
METHODS = ("rrf", "weighted")
MAX_WEIGHT = 1000.0  # fused scores stay finite (JSON has no infinity)


@dataclass(frozen=True)
class FusionSpec:
    # Score fusion, chosen on the validation queries of homedepot AND the sample catalog (best
    # worst-case nDCG@10 gain over the better single system; docs/RESULTS.md "Hybrid retrieval").
    # The defaults here are the settings' defaults.
    method: str = "weighted"
    # The RRF constant: larger flattens the top ranks' advantage; 60 is the paper's value.
    rrf_k: int = 60
    # Relative weight of each list (RRF numerators, or the weighted sum's coefficients). Dense-
    # heavy: where the dense model is strong (sample, nDCG@10 0.96) BM25 only breaks its ties and
    # adds exact matches; homedepot alone would pick 0.5 / 0.5 (+0.02 nDCG@10 there).
    dense_weight: float = 0.8
    lexical_weight: float = 0.2
    # Candidates per list before fusion (at least offset + k): deep enough that an item ranked
    # well by one side only can still surface, cheap to fuse (100 vs 200: within noise).
    candidates: int = 100
    # Listings holding the query's exact identifiers first (module docstring); tested on model
    # numbers a dense near-miss outranked (tests/service/serving/test_identifiers.py); not yet measured on
    # homedepot's identifier subset (docs/SERVING.md §8).
    identifier_boost: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"fusion: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.rrf_k < 0:
            raise ValueError(f"rrf_k: must be >= 0, got {self.rrf_k}")
        ok = all(0 <= w <= MAX_WEIGHT for w in (self.dense_weight, self.lexical_weight))  # NaN fails too
        if not ok or self.dense_weight + self.lexical_weight <= 0:
            raise ValueError(f"weights: need each in 0..{MAX_WEIGHT:g} and a positive sum, got "
                             f"{self.dense_weight}, {self.lexical_weight}")
        if self.candidates < 1:
            raise ValueError(f"candidates: must be >= 1, got {self.candidates}")

    def key(self) -> tuple:
        """Hashable identity (part of the result cache key)."""
        return (self.method, self.rrf_k, float(self.dense_weight), float(self.lexical_weight), self.candidates,
                self.identifier_boost)

    def top_score(self) -> float:
        """The largest fused score the method gives a listing (both lists' best)."""
        total = self.dense_weight + self.lexical_weight
        return total / (self.rrf_k + 1) if self.method == "rrf" else total

    def depth(self, k: int, offset: int) -> int:
        """How deep each list is searched for a page [offset, offset + k): the last fusion tier the
        page reads (`candidates` * 2^t, the first one >= offset + k)."""
        return tier_sizes(offset + k, first=self.candidates)[-1]


def _order(rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((rows, -scores))  # score desc, then row asc
    return rows[order].astype(np.int64), scores[order].astype(np.float32)


def rrf(lists: Sequence[np.ndarray], weights: Sequence[float], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal-rank fusion of ranked row lists (best first, no -1) -> (rows, scores) best first."""
    total: dict[int, float] = {}
    for rows, w in zip(lists, weights, strict=True):
        for rank, r in enumerate(rows, start=1):
            total[int(r)] = total.get(int(r), 0.0) + w / (k + rank)
    if not total:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    rows = np.fromiter(total.keys(), np.int64, len(total))
    return _order(rows, np.fromiter(total.values(), np.float64, len(total)))


def minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi > lo:
        return (x - lo) / (hi - lo)
    return (x > 0).astype(np.float64)


def weighted(rows: np.ndarray, dense: np.ndarray, lexical: np.ndarray, dense_weight: float,
             lexical_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidates `rows` (m,) with both scores (m,) -> (rows, fused scores) best first."""
    if len(rows) == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    fused = dense_weight * minmax(np.asarray(dense, np.float64)) + lexical_weight * minmax(np.asarray(lexical, np.float64))
    return _order(np.asarray(rows, np.int64), fused)


def boost(rows: np.ndarray, scores: np.ndarray, exact: tuple[np.ndarray, np.ndarray],
          bonus: float) -> tuple[np.ndarray, np.ndarray]:
    """Add `bonus` x (identifiers held) to the fused scores of the `exact` rows (rows, counts),
    adding those the lists missed (fused score 0) -> (rows, scores) best first."""
    ex_rows, counts = exact
    if len(ex_rows) == 0:
        return rows, scores
    missing = ~np.isin(ex_rows, rows)
    rows = np.concatenate([rows, ex_rows[missing]])
    scores = np.concatenate([np.asarray(scores, np.float64), np.zeros(int(missing.sum()))])
    pos = {int(r): i for i, r in enumerate(rows)}
    for r, c in zip(ex_rows, counts, strict=True):
        scores[pos[int(r)]] += bonus * int(c)
    return _order(rows, scores)


def _fuse(d: np.ndarray, lx: np.ndarray, spec: FusionSpec, dense_of: Callable[[np.ndarray], np.ndarray],
          lexical_of: Callable[[np.ndarray], np.ndarray],
          exact: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    with_exact = exact is not None and spec.identifier_boost and len(exact[0]) > 0
    if spec.method == "rrf":
        rows, scores = rrf([d, lx], [spec.dense_weight, spec.lexical_weight], spec.rrf_k)
    else:
        parts = [d, lx, exact[0]] if with_exact and exact is not None else [d, lx]
        cand = np.unique(np.concatenate(parts))  # (m,) sorted rows
        if len(cand) == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        rows, scores = weighted(cand, dense_of(cand), lexical_of(cand), spec.dense_weight, spec.lexical_weight)
    if with_exact and exact is not None:
        rows, scores = boost(rows, scores, exact, 2.0 * spec.top_score())
    return rows, scores


def hybrid_one(dense_rows: np.ndarray, lexical_rows: np.ndarray, spec: FusionSpec, depth: int,
               dense_of: Callable[[np.ndarray], np.ndarray],
               lexical_of: Callable[[np.ndarray], np.ndarray], need: int = 0,
               exact: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One query: its dense and lexical rankings (best first, -1 padding allowed), cut to `depth`,
    fused -> (rows, scores) best first. `dense_of(rows)` / `lexical_of(rows)` give exact scores of
    any rows (used by `weighted` only). `exact` = (rows, counts) of the listings holding the
    query's identifiers (`LexicalIndex.identifier_matches`, filters and deny-list applied): first.

    `need` > depth (a deep page): fused in tiers depth, 2 depth, ... until `need` rows are placed;
    each tier but the last places its best new rows up to its own depth, the last all its new rows.
    The lists must reach the last tier (`tier_sizes(need, depth)[-1]`, `FusionSpec.depth`)."""
    d_all = dense_rows[dense_rows >= 0]
    l_all = lexical_rows[lexical_rows >= 0]
    sizes = tier_sizes(need, first=depth)
    got_r, got_s = np.empty(0, np.int64), np.empty(0, np.float32)
    for t, size in enumerate(sizes):
        rows, scores = _fuse(d_all[:size], l_all[:size], spec, dense_of, lexical_of, exact)
        new = ~np.isin(rows, got_r)
        room = len(rows) if t == len(sizes) - 1 else size - len(got_r)
        got_r = np.concatenate([got_r, rows[new][:room]])
        got_s = np.concatenate([got_s, scores[new][:room].astype(np.float32)])
        if len(got_r) < size:  # both lists ran out: no deeper tier adds anything
            break
    return got_r, got_s
