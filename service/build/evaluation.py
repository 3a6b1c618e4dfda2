"""Evaluating an index against judgments: query vectors in, metrics out, over the FULL catalog.

Used by `build-index` (before publishing) and by `service eval` (on any version, published or not).
`mode_rankings` ranks the same queries dense, lexical and hybrid (index/rank_fusion.py, the engine's own
per-query fusion), so `service eval` reports the three side by side.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from index.lexical import LexicalIndex, top_k
from index.rank_fusion import FusionSpec, hybrid_one
from index.search import FaissCpuSearcher, Searcher, exact_scores, exact_subset
from model.data.interactions import Judgments
from model.eval.metrics import ranking_metrics, recall_at_k
from service.serving.cache import normalise_query

RECALL_KS = (10, 100, 500)
CURVE_KS = (1, 2, 5, 10, 20, 50, 100, 200, 500)


def exclude_training_queries(judgments: Judgments, interactions: Iterable[Any]) -> tuple[Judgments, dict[str, Any]]:
    """Judgments without the judged queries that also occur in the training interactions, compared
    as the query cache compares them (service/serving/cache.py normalise_query: case and whitespace), and
    a report {queries: how many were left out, examples}. A query the model was trained on
    measures memory, not retrieval: reported metrics cover the held-out queries only."""
    trained = {normalise_query(it.query) for it in interactions}
    leaked = [q for q in judgments.queries if normalise_query(q) in trained]
    report: dict[str, Any] = {"queries": len(leaked), "of": len(judgments.queries), "excluded": True,
                              "examples": leaked[:20]}
    if not leaked:
        return judgments, report
    drop = set(leaked)
    kept = dataclasses.replace(
        judgments, relevance={q: r for q, r in judgments.relevance.items() if q not in drop},
        title_answerable={q: f for q, f in judgments.title_answerable.items() if q not in drop})
    return kept, report


def ranked_ids(searcher: Searcher, ids: Sequence[str], qvecs: np.ndarray, k: int, batch: int = 256) -> list[list[str]]:
    out: list[list[str]] = []
    for start in range(0, len(qvecs), batch):
        res = searcher.search(qvecs[start:start + batch], k)
        out.extend([[ids[r] for r in row if r >= 0] for row in res.rows])
    return out


def exact_rows(vectors: np.ndarray, qvecs: np.ndarray, k: int, batch: int = 256) -> np.ndarray:
    """Exact top-k rows (Q, k) by brute force: the reference for ANN recall."""
    all_rows = np.arange(vectors.shape[0])
    return np.vstack([exact_subset(vectors, all_rows, qvecs[s:s + batch], k).rows for s in range(0, len(qvecs), batch)])


def ann_recall(searcher: Searcher, vectors: np.ndarray, qvecs: np.ndarray, k: int) -> float:
    """Mean |ANN top-k ∩ exact top-k| / k, with query-tower vectors, at the served k."""
    if isinstance(searcher, FaissCpuSearcher) and searcher.index.__class__.__name__ == "IndexFlat":
        return 1.0  # an exact index: nothing to measure
    k = min(k, vectors.shape[0])
    exact = exact_rows(vectors, qvecs, k)
    got = np.vstack([searcher.search(qvecs[s:s + 256], k).rows for s in range(0, len(qvecs), 256)])
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, exact, strict=True)]))


def evaluate_rankings(ranked: list[list[str]], queries: Sequence[str], judgments: Judgments) -> dict[str, Any]:
    """Overall metrics, plus the title-answerable / auxiliary-only split when judgments carry it.

    A split scores only its own relevant listings; relevant listings of the OTHER split are removed
    from the ranking first (a condensed list), so a model is not charged for ranking a listing
    that is relevant, just answerable another way, above one of this split's listings."""
    relevant = [judgments.relevant(q) for q in queries]
    out: dict[str, Any] = ranking_metrics(ranked, relevant, RECALL_KS)
    out["recall_curve"] = {str(k): recall_at_k(ranked, relevant, k) for k in CURVE_KS}
    if judgments.has_split():
        for subset, other, name in (("title", "aux", "title_answerable"), ("aux", "title", "auxiliary_only")):
            rel = [judgments.relevant(q, subset) for q in queries]
            drop = [judgments.relevant(q, other).keys() for q in queries]
            condensed = [[i for i in r if i not in d] for r, d in zip(ranked, drop, strict=True)]
            out[name] = ranking_metrics(condensed, rel, RECALL_KS)
    return out


def evaluate(
    searcher: Searcher,
    ids: Sequence[str],
    encode: Any,
    judgments: Judgments,
    *,
    served_k: int = 10,
) -> dict[str, Any]:
    """Encode the judged queries with `encode(list[str]) -> (Q, d)`, search, score."""
    queries = judgments.queries
    t0 = time.perf_counter()
    qvecs = np.asarray(encode(queries), dtype=np.float32)
    t1 = time.perf_counter()
    ranked = ranked_ids(searcher, ids, qvecs, max(RECALL_KS))
    t2 = time.perf_counter()
    metrics = evaluate_rankings(ranked, queries, judgments)
    metrics[f"ann_recall@{served_k}"] = ann_recall(searcher, searcher.vectors, qvecs, served_k)
    metrics["latency"] = {
        "encode_ms_per_query": 1000 * (t1 - t0) / max(1, len(queries)),
        "search_ms_per_query": 1000 * (t2 - t1) / max(1, len(queries)),
    }
    return metrics


def mode_rankings(searcher: Searcher, lexical: LexicalIndex, ids: Sequence[str], queries: Sequence[str],
                  qvecs: np.ndarray, k: int, spec: FusionSpec, batch: int = 256) -> dict[str, list[list[str]]]:
    """Top-k listing ids per query in each mode, as the engine answers a request for k results."""
    depth = spec.depth(k, 0)
    out: dict[str, list[list[str]]] = {"dense": [], "lexical": [], "hybrid": []}
    vectors = searcher.vectors
    for start in range(0, len(queries), batch):
        res = searcher.search(qvecs[start:start + batch], depth)
        for j, q in enumerate(queries[start:start + batch]):
            qv = qvecs[start + j]
            full = lexical.scores(q)  # (n,)
            lex_rows, _ = top_k(full, depth)
            exact = lexical.identifier_matches(q) if spec.identifier_boost else None
            fused, _ = hybrid_one(res.rows[j], lex_rows, spec, spec.candidates,
                                  lambda rs, qv=qv: exact_scores(vectors, qv[None], rs[None])[0],
                                  lambda rs, full=full: full[rs], need=k, exact=exact)
            out["dense"].append([ids[r] for r in res.rows[j][:k] if r >= 0])
            out["lexical"].append([ids[r] for r in lex_rows[:k]])
            out["hybrid"].append([ids[r] for r in fused[:k]])
    return out


def evaluate_modes(searcher: Searcher, lexical: LexicalIndex, ids: Sequence[str], encode: Any,
                   judgments: Judgments, spec: FusionSpec) -> dict[str, Any]:
    """Dense, lexical and hybrid metrics of the judged queries, side by side (+ the fusion used)."""
    queries = judgments.queries
    qvecs = np.asarray(encode(queries), dtype=np.float32)
    ranked = mode_rankings(searcher, lexical, ids, queries, qvecs, max(RECALL_KS), spec)
    out: dict[str, Any] = {mode: evaluate_rankings(r, queries, judgments) for mode, r in ranked.items()}
    out["fusion"] = dict(zip(("method", "rrf_k", "dense_weight", "lexical_weight", "candidates", "identifier_boost"),
                             spec.key(), strict=True))
    return out
