"""Scores for the real-data tables: the service's metrics plus bootstrap 95% CIs over queries.

`score_rankings` wraps service.build.evaluation.evaluate_rankings (the code `service eval` runs) and adds
percentile-bootstrap intervals of each per-query metric (model.eval.metrics.bootstrap_ci), keeping the
per-query values so `paired_difference` can compare two systems query by query. `self_ranks`
is the leave-one-view-out convention of model/eval/crossview.py for a score matrix: the rank of a
query's own listing = the number of listings scoring STRICTLY higher (ties favour the listing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from model.data.interactions import Judgments
from model.eval.metrics import bootstrap_ci, per_query_mrr, per_query_ndcg, per_query_recall, ranking_metrics
from service.build.evaluation import RECALL_KS, evaluate_rankings

N_BOOT = 1000


def per_query(ranked: Sequence[Sequence[str]], relevant: Sequence[Mapping[str, float]],
              recall_ks: Sequence[int] = RECALL_KS) -> dict[str, list[float]]:
    """Per-query values of every headline metric (queries with no relevant item left out)."""
    out = {f"recall@{k}": per_query_recall(ranked, relevant, k) for k in recall_ks}
    out["ndcg@10"] = per_query_ndcg(ranked, relevant, 10)
    out["mrr@10"] = per_query_mrr(ranked, relevant, 10)
    return out


def add_cis(metrics: dict[str, Any], values: dict[str, list[float]], seed: int = 0,
            keep_values: bool = False) -> dict[str, Any]:
    metrics["ci"] = {k: list(bootstrap_ci(v, n_boot=N_BOOT, seed=seed)) for k, v in values.items()}
    if keep_values:  # for paired comparisons between systems on the same queries
        metrics["per_query"] = {k: [round(x, 6) for x in v] for k, v in values.items()}
    return metrics


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """Mean of a - b over the same queries, with a paired percentile-bootstrap 95% CI: the
    interval excludes 0 when one system is better on these queries beyond resampling noise."""
    if len(a) != len(b):
        raise ValueError(f"paired values: {len(a)} vs {len(b)} queries")
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    lo, hi = bootstrap_ci(diff, n_boot=N_BOOT, seed=seed)
    return {"mean": float(diff.mean()) if diff.size else float("nan"), "ci": [lo, hi], "n": int(diff.size)}


def score_rankings(ranked: Sequence[Sequence[str]], queries: Sequence[str], judgments: Judgments) -> dict[str, Any]:
    """`service eval`'s metrics of these rankings + `ci` {metric: [lo, hi]} (95%, 1,000 resamples)."""
    metrics = evaluate_rankings([list(r) for r in ranked], queries, judgments)
    relevant = [judgments.relevant(q) for q in queries]
    return add_cis(metrics, per_query(ranked, relevant), keep_values=True)


def score_sets(ranked: Sequence[Sequence[str]], relevant: Sequence[Mapping[str, float]],
               recall_ks: Sequence[int]) -> dict[str, Any]:
    """Metrics + CIs for tasks whose labels are plain sets (rooms, categories): gain 1 each."""
    metrics: dict[str, Any] = ranking_metrics(ranked, relevant, recall_ks)
    return add_cis(metrics, per_query(ranked, relevant, recall_ks))


def self_ranks(scores: np.ndarray, own: np.ndarray) -> np.ndarray:
    """scores (q, n), own (q,) column of each query's listing -> (q,) rank, 0 = first."""
    own_score = scores[np.arange(len(own)), own]  # (q,)
    return (scores > own_score[:, None]).sum(axis=1)


def rank_recalls(ranks: Sequence[int], ks: Sequence[int] = (1, 10)) -> dict[str, Any]:
    r = np.asarray(ranks)
    out: dict[str, Any] = {f"recall@{k}": float((r < k).mean()) if r.size else float("nan") for k in ks}
    out["n_queries"] = int(r.size)
    out["ci"] = {f"recall@{k}": list(bootstrap_ci((r < k).astype(float), n_boot=N_BOOT)) for k in ks}
    return out
