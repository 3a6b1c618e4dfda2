"""Ranking metrics over the full catalog, for graded judgments.

Conventions (tested against hand-computed cases in tests/model/eval/test_metrics.py):
- `ranked[q]` is the retrieved item ids for query q, best first (ties were already broken by the
  searcher; a metric never reorders);
- `relevant[q]` maps the relevant item ids of q to their gain (> 0);
- a query with no relevant item is left out of every average (and counted in `n_skipped`);
- Recall@k = |top-k ∩ relevant| / |relevant|; nDCG@k uses linear gains and log2(rank + 1)
  discounts, normalised by the ideal ordering of that query's gains; MRR@k = 1 / rank of the first
  relevant item within the top k, else 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def _check(ranked: Sequence[Sequence[str]], relevant: Sequence[Mapping[str, float]]) -> None:
    if len(ranked) != len(relevant):
        raise ValueError(f"ranked has {len(ranked)} queries but relevant has {len(relevant)}")


def per_query_recall(ranked: Sequence[Sequence[str]], relevant: Sequence[Mapping[str, float]], k: int) -> list[float]:
    _check(ranked, relevant)
    return [len(set(r[:k]) & rel.keys()) / len(rel) for r, rel in zip(ranked, relevant, strict=True) if rel]


def per_query_ndcg(ranked: Sequence[Sequence[str]], relevant: Sequence[Mapping[str, float]], k: int) -> list[float]:
    _check(ranked, relevant)
    out = []
    for r, rel in zip(ranked, relevant, strict=True):
        if not rel:
            continue
        dcg = sum(rel.get(item, 0.0) / math.log2(i + 2) for i, item in enumerate(r[:k]))
        ideal = sorted(rel.values(), reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        out.append(dcg / idcg if idcg > 0 else 0.0)
    return out


def per_query_mrr(ranked: Sequence[Sequence[str]], relevant: Sequence[Mapping[str, float]], k: int) -> list[float]:
    _check(ranked, relevant)
    out = []
    for r, rel in zip(ranked, relevant, strict=True):
        if not rel:
            continue
        out.append(next((1.0 / (i + 1) for i, item in enumerate(r[:k]) if item in rel), 0.0))
    return out


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def recall_at_k(ranked: Sequence[Sequence[str]], relevant: Sequence[Mapping[str, float]], k: int) -> float:
    return _mean(per_query_recall(ranked, relevant, k))


def ndcg_at_k(ranked: Sequence[Sequence[str]], relevant: Sequence[Mapping[str, float]], k: int) -> float:
    return _mean(per_query_ndcg(ranked, relevant, k))


def mrr_at_k(ranked: Sequence[Sequence[str]], relevant: Sequence[Mapping[str, float]], k: int) -> float:
    return _mean(per_query_mrr(ranked, relevant, k))


def ranking_metrics(
    ranked: Sequence[Sequence[str]],
    relevant: Sequence[Mapping[str, float]],
    recall_ks: Sequence[int] = (10, 100, 500),
) -> dict[str, float]:
    """The standard report: recall@k for each k, ndcg@10, mrr@10, query counts."""
    out: dict[str, float] = {f"recall@{k}": recall_at_k(ranked, relevant, k) for k in recall_ks}
    out["ndcg@10"] = ndcg_at_k(ranked, relevant, 10)
    out["mrr@10"] = mrr_at_k(ranked, relevant, 10)
    n = sum(1 for rel in relevant if rel)
    out["n_queries"] = n
    out["n_skipped"] = len(relevant) - n
    return out


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of per-query values."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))
