"""The BM25 baseline (the `bm25s` package, dev extra), with one documented tokenisation.

Tokenisation: lowercase, split on every non-alphanumeric character, no stop words, no stemming
(`tokenize`). Scoring: bm25s defaults (Lucene variant, k1 = 1.5, b = 0.75: idf = ln(1 + (N - df
+ 0.5) / (df + 0.5)), term score idf * tf / (tf + k1 (1 - b + b |d| / avgdl)), i.e. without the
constant (k1 + 1) factor, as Lucene >= 8; the ranking is the same). A listing scoring 0
shares no token with the query: it is not returned (a lexical engine has no opinion about it),
so a ranking may be shorter than k.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class Bm25:
    """BM25 over `docs` (strings): top-k rows per query, or every document's score for one query."""

    def __init__(self, docs: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        import bm25s

        self.n = len(docs)
        self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        # An empty document keeps its row (as the empty token) so rows stay listing positions.
        self._bm25.index([tokenize(d) or [""] for d in docs], show_progress=False)
        self._vocab = set(self._bm25.vocab_dict)

    def _known(self, query: str) -> list[str]:
        return [t for t in tokenize(query) if t in self._vocab and t]

    def scores(self, query: str) -> np.ndarray:
        """(n,) float32 score of every document for one query (0 where no token is shared)."""
        toks = self._known(query)
        if not toks:
            return np.zeros(self.n, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(toks), dtype=np.float32)

    def top(self, queries: Sequence[str], k: int) -> list[list[int]]:
        """Rows of the top-k documents per query, best first; zero-score documents left out; ties
        broken by row (stable)."""
        out = []
        for q in queries:
            s = self.scores(q)  # (n,)
            kk = min(k, self.n)
            cand = np.argpartition(-s, kk - 1)[:kk] if kk < self.n else np.arange(self.n)
            cand = cand[np.lexsort((cand, -s[cand]))]  # by score desc, then row
            out.append([int(r) for r in cand if s[r] > 0])
        return out
