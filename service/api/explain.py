"""`explain`: why each hit of a search is where it is, computed only when asked, after the search.

Like `fields` (service/api/details.py), explain is off the hot path: the batch answers the search
unchanged, then `explain_hits` recomputes what the engine computed for the one request, with the
same functions on the same inputs: the query vector (re-encoded; the stored vector for like_id;
the photo's vector, as encoded for the search, for POST /search/image),
both rankings to the engine's depth under the same filter and deny-list, the identifier matches,
and `hybrid_one` (index/rank_fusion.py) over them. So the explained fused score is the hit's score.

Per hit: the dense cosine (the served score, `exact_scores` from vectors.npy), BM25 raw and, in
weighted fusion, min-max normalised over the fusion tier's candidates (null in RRF), the fused
score, the rank in each list (1-based, null when the list misses it within the searched depth),
whether the identifier boost applied, and per view of the listing (the version's slots) the weight
fusion gave it and its cosine with the query vector, read from view_vectors.npy / slot_weights.npy
(service/build/pipeline.py). A version without them (built before, or --view-vectors off) answers
`"views": null` and names the part in `missing`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from index.lexical import top_k
from index.rank_fusion import FusionSpec, hybrid_one, minmax
from index.search import exact_scores, tier_sizes
from service.api.schemas import HitExplain, SearchHit, SearchResponse, ViewExplain
from service.api.state import ServiceState
from service.serving.engine import Engine, LoadedVersion, SearchRequest


def _rank(rows: np.ndarray, row: int) -> int | None:
    at = np.nonzero(rows == row)[0]
    return int(at[0]) + 1 if len(at) else None


def _normalized_lexical(row: int, score: float, d: np.ndarray, lx: np.ndarray, full_dense: Any, full_lex: np.ndarray,
                        spec: FusionSpec, need: int, exact: tuple[np.ndarray, np.ndarray] | None) -> float | None:
    """The hit's min-max normalised BM25 in weighted fusion: over the candidates of the tier that
    placed it (the first tier whose fused score of the row is the hit's; else the first holding it)."""
    with_exact = exact is not None and spec.identifier_boost and len(exact[0]) > 0
    first: float | None = None
    for size in tier_sizes(need, first=spec.candidates):
        parts = [d[:size], lx[:size]] + ([exact[0]] if with_exact and exact is not None else [])
        cand = np.unique(np.concatenate(parts))  # (m,)
        at = np.nonzero(cand == row)[0]
        if not len(at):
            continue
        ln = minmax(np.asarray(full_lex[cand], np.float64))  # (m,)
        dn = minmax(np.asarray(full_dense(cand), np.float64))  # (m,)
        fused = spec.dense_weight * dn[at[0]] + spec.lexical_weight * ln[at[0]]
        if with_exact and exact is not None:
            held = exact[1][exact[0] == row]
            fused += 2.0 * spec.top_score() * (int(held[0]) if len(held) else 0)
        if first is None:
            first = float(ln[at[0]])
        if abs(fused - score) <= 1e-5 * max(1.0, abs(score)):
            return float(ln[at[0]])
    return first


def explain_hits(engine: Engine, lv: LoadedVersion, r: SearchRequest, hits: Sequence[SearchHit]) -> list[HitExplain]:
    """One request's hits (as answered on `lv`) -> their explanations, in order."""
    mode, spec = engine.resolve(r, lv)
    depth = engine.depth(r, mode, spec)
    records = lv.store.by_ids([h.id for h in hits])
    like_row = -1
    if r.vector is not None:  # search by photo: the vector the search was answered with
        q = np.asarray(r.vector, np.float32)  # (d,)
    elif r.like_id is not None:
        own = lv.store.by_ids([r.like_id]).get(r.like_id)
        like_row = own.row if own is not None else -1
        q = np.asarray(lv.searcher.vectors[like_row], np.float32) if like_row >= 0 else None  # (d,)
    else:
        q = lv.encoder.encode([r.query])[0]  # (d,) the batch's vector, recomputed for this request only
    fmask = None if r.filter.empty else lv.filters.mask(r.filter)
    deny = engine.deny_rows(lv)
    d_rows = d_scores = np.empty(0, np.int64)
    if q is not None:
        mask, extra = deny.plan(fmask)
        res = lv.searcher.search(q[None], depth + extra, mask)
        if extra:
            res = deny.drop(res, depth)
        d_rows, d_scores = res.rows[0], res.scores[0]
    l_rows = l_scores = np.empty(0, np.int64)
    full: np.ndarray | None = None
    exact = None
    if lv.lexical is not None and r.query:
        allowed = fmask
        if len(deny):
            allowed = np.ones(lv.n_items, dtype=bool) if fmask is None else fmask.copy()
            allowed[deny.rows] = False
        full = lv.lexical.scores(r.query)  # (n,)
        l_rows, l_scores = top_k(full, depth, allowed)
        if mode == "hybrid" and spec.identifier_boost:
            exact = lv.lexical.identifier_matches(r.query, allowed)

    def dense_of(rs: np.ndarray) -> np.ndarray:
        return exact_scores(lv.searcher.vectors, q[None], rs[None])[0] if q is not None else np.zeros(len(rs))

    fused_of: dict[int, float] = {}
    need = r.offset + r.k + (r.like_id is not None)
    if mode == "hybrid" and full is not None:
        lex = full
        fr, fs = hybrid_one(d_rows, l_rows, spec, spec.candidates, dense_of, lambda rs: lex[rs], need=need, exact=exact)
        fused_of = {int(a): float(b) for a, b in zip(fr, fs, strict=True)}
    elif mode == "lexical":
        fused_of = {int(a): float(b) for a, b in zip(l_rows, l_scores, strict=True) if a >= 0}
    else:
        fused_of = {int(a): float(b) for a, b in zip(d_rows, d_scores, strict=True) if a >= 0}
    # ranks as the shopper sees the lists: without the like_id listing itself
    d_ranked = d_rows[(d_rows >= 0) & (d_rows != like_row)]
    l_ranked = l_rows[(l_rows >= 0) & (l_rows != like_row)]
    exact_rows = set(int(x) for x in exact[0]) if exact is not None else set()
    missing = [] if lv.view_vectors is not None else ["views"]
    if lv.lexical is None:
        missing.append("lexical")
    slots = (lv.manifest.get("view_vectors") or {}).get("slots") or ()
    out: list[HitExplain] = []
    for h in hits:
        rec = records.get(h.id)
        if rec is None:  # the listing is gone from the version served now
            out.append(HitExplain(fused=h.score, missing=["listing"]))
            continue
        row = rec.row
        cos = float(dense_of(np.array([row]))[0]) if q is not None else None
        bm25 = float(full[row]) if full is not None else None
        norm = None
        if mode == "hybrid" and spec.method == "weighted" and full is not None:
            norm = _normalized_lexical(row, fused_of.get(row, h.score), d_rows[d_rows >= 0], l_rows[l_rows >= 0],
                                       dense_of, full, spec, need, exact)
        views = None
        if lv.view_vectors is not None and lv.slot_weights is not None and q is not None:
            z = np.asarray(lv.view_vectors[row], np.float32)  # (S, d)
            w = np.asarray(lv.slot_weights[row], np.float32)  # (S,)
            c = z @ q  # (S,)
            has = np.linalg.norm(z, axis=1) > 0  # (S,) the views the listing has
            views = [ViewExplain(view=str(slots[s]) if s < len(slots) else str(s), weight=float(w[s]),
                                 cosine=float(c[s])) for s in np.nonzero(has)[0]]
        out.append(HitExplain(dense_cosine=cos, lexical_bm25=bm25, lexical_normalized=norm,
                              fused=fused_of.get(row, h.score), dense_rank=_rank(d_ranked, row),
                              lexical_rank=_rank(l_ranked, row), identifier_boost=row in exact_rows,
                              views=views, missing=missing))
    return out


async def with_explain(state: ServiceState, answer: SearchResponse, req: SearchRequest) -> SearchResponse:
    """`answer` with an `explain` object on each hit (computed in a thread, off the event loop)."""
    if not answer.results:
        return answer
    engine = state.engine
    lv = engine.current
    explained = await asyncio.to_thread(explain_hits, engine, lv, req, answer.results)
    results = [SearchHit.model_construct(**{**h.__dict__, "explain": e})
               for h, e in zip(answer.results, explained, strict=True)]
    return answer.model_copy(update={"results": results})
