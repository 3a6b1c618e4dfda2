"""Hard negatives mined from the current towers' own ranking of the catalog (ANCE-style).

In-batch negatives are random listings: after an epoch the towers separate them easily and learn
little more. Before each epoch (`--hard-negatives N`) every training query ranks the whole catalog
with the towers as they are now (the vectors the epoch's validation already computed, or one
extra embedding without validation), and each of its pairs gets N listings drawn from that ranking:
the near misses that shoppers would see above the right answer. They join the query's softmax as
extra columns (model/objectives/contrastive.py).

What is never a negative of a query: a listing it interacted with (any pair of that query), and a
listing whose title text is identical to such a listing's (catalogs repeat listings; the
duplicate is as relevant as the original). Unjudged relevant listings are the usual trap of mined
negatives (a real catalog judges few of them): the first `skip` non-positive ranks are left out,
since that is where they crowd, and the N are drawn uniformly from the next `depth` ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.train.validation import exact_top


def mine_hard_negatives(
    query_vecs: np.ndarray,
    item_vecs: np.ndarray,
    positives: Sequence[set[int]],
    title_rows: np.ndarray,
    n_negatives: int,
    depth: int,
    skip: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """-> (Q, n_negatives) int64 listing rows per query, -1 where fewer candidates were left.

    query_vecs (Q, d) and item_vecs (n, d) are unit vectors; positives[q] the listing rows query q
    interacted with; title_rows (n,) each listing's title text row (-1: none), so a listing whose
    title equals a positive's is excluded too."""
    if len(positives) != len(query_vecs):
        raise ValueError(f"{len(positives)} positive sets for {len(query_vecs)} queries")
    if n_negatives < 1 or depth < n_negatives or skip < 0:
        raise ValueError(f"hard negatives: need 1 <= n ({n_negatives}) <= depth ({depth}) and skip ({skip}) >= 0")
    out = np.full((len(query_vecs), n_negatives), -1, dtype=np.int64)
    if not len(item_vecs):
        return out
    widest = max((len(p) for p in positives), default=0)
    # enough ranks that `skip + depth` non-positives remain after removing the positives and
    # their duplicates (a duplicate title is rare: 2x the positives covers it; a shortfall only
    # means fewer candidates, never a positive)
    ranked = exact_top(query_vecs, item_vecs, skip + depth + 2 * widest + 8)  # (Q, K)
    for q, row in enumerate(ranked):
        pos = positives[q]
        pos_titles = {int(title_rows[p]) for p in pos if title_rows[p] >= 0}
        cands = [int(r) for r in row if int(r) not in pos and int(title_rows[r]) not in pos_titles]
        window = cands[skip:skip + depth]
        if window:
            pick = rng.choice(len(window), size=min(n_negatives, len(window)), replace=False)
            out[q, :len(pick)] = [window[i] for i in pick]
    return out
