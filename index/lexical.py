"""The lexical index: BM25 over the listings' text views, beside the dense FAISS index.

Texts in, rows out, like the rest of `index/`. The engine is `bm25s` (pure Python + numpy +
scipy): it precomputes every (token, document) BM25 weight at build time into a sparse CSC matrix,
so a query is a sum of a few columns and a top-k, with no JVM or native server to run beside the
service, saved as plain `.npy` + JSON (no pickle) that `ArtifactStore` checksums like every other
file. (Tantivy would add a Rust extension and its own segment files and merge policy for what is,
at catalog scale, one immutable index rebuilt per version.)

Tokenisation (`tokenize`, version `TOKENIZER`): lowercase; tokens are runs of letters and digits.
Identifiers get two extra forms so "SM-G991B", "sm g991b" and "smg991b" meet:
  - a chunk of tokens joined by `-`, `.`, `/` or `_` that holds letters AND digits ("sm-g991b")
    also yields the tokens glued together ("smg991b");
  - a token mixing letters and digits ("rtx4070", "90x200") also yields its letter and digit runs
    ("rtx", "4070"; "90", "x", "200"), so "RTX 4070" finds a title written "RTX4070".
No stemming: model numbers and sizes are what the lexical side is for. English stop words
(`STOP_WORDS`: "the", "and", "for", …) are dropped from the QUERY only: a shopper's "the" matched
most titles at ~0.9 and pulled arbitrary listings into the fused list. Documents keep them, so the
index (and its tokenizer version) is unchanged; a query of only stop words has no lexical hits.

Scoring: bm25s' Lucene variant, k1 = 1.5, b = 0.75. A document scoring 0 shares no token with the
query and is never returned (a lexical ranking may be shorter than k).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.search import SearchResult

TOKENIZER = "alnum-v1"
# A letters+digits query token held by at most this many listings (and at most 1% of them) is
# an identifier (hybrid search ranks the listings that hold it first: index/rank_fusion.py).
IDENTIFIER_MAX_DF = 50


def identifier_max_df(n_docs: int) -> int:
    """How many listings may hold an identifier: 50, or 1% of a small catalog (at least 3), so a
    size that a tenth of a 300-listing catalog holds ("90x200") is not one."""
    return max(3, min(IDENTIFIER_MAX_DF, -(-n_docs // 100)))
META = "lexical.json"
DOCS = "lexical.docs.jsonl"  # the indexed texts, one JSON string per row (update-index carries them)
# bm25s' files, flat beside the version's other files (prefixed, so a version folder stays flat).
FILES = {"data_name": "lexical.data.npy", "indices_name": "lexical.indices.npy",
         "indptr_name": "lexical.indptr.npy", "vocab_name": "lexical.vocab.json", "params_name": "lexical.params.json"}
_TOKEN = re.compile(r"[a-z0-9]+")
_CHUNK = re.compile(r"[a-z0-9]+(?:[-./_][a-z0-9]+)+")
_RUNS = re.compile(r"[a-z]+|[0-9]+")
# Short function words of English queries ("in" stays: it is the inch of "3/4 in"). Size letters stay ("x", "l", "s"; the "a" run of "A4"
# goes, but "a4" itself still matches), and so do product words ("top", "set", "up", "off").
_STOP = """
a an the and or nor but of for with without on at to from by into onto about over under as is are
was were be been being it its this that these those my your our their his her me we you they i
so than then there here very just not no any some all each every such only own same too can will
"""
STOP_WORDS = frozenset(_STOP.split())


def _bm25s() -> Any:
    """The bm25s module, imported late; its import sets its own logger to DEBUG (a line per build
    and load at any service log level): put back to WARNING."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def _mixed(token: str) -> bool:
    return any(c.isdigit() for c in token) and any(c.isalpha() for c in token)


def tokenize(text: str) -> list[str]:
    """The index's (and the query's) tokens, in text order, with the identifier forms added."""
    low = text.lower()
    out: list[str] = []
    for tok in _TOKEN.findall(low):
        out.append(tok)
        if _mixed(tok):
            out.extend(_RUNS.findall(tok))
    for chunk in _CHUNK.findall(low):
        glued = "".join(_TOKEN.findall(chunk))
        if _mixed(glued):
            out.append(glued)
    return out


@dataclass(frozen=True)
class LexicalConfig:
    # BM25 term saturation: Lucene's and Elasticsearch's default, fine for short titles.
    k1: float = 1.5
    # Length normalisation: the same default; a long description does not drown a title match.
    b: float = 0.75
    tokenizer: str = TOKENIZER


class LexicalIndex:
    """BM25 over n documents: `scores(query)` for every row, `search(queries, k, allowed)` top-k."""

    def __init__(self, engine: Any, n_docs: int, cfg: LexicalConfig) -> None:
        self._bm25 = engine
        self.n_docs = n_docs
        self.cfg = cfg
        self._vocab: dict[str, int] = dict(engine.vocab_dict)

    @classmethod
    def build(cls, docs: Sequence[str], cfg: LexicalConfig | None = None) -> LexicalIndex:
        cfg = cfg or LexicalConfig()
        engine = _bm25s().BM25(k1=cfg.k1, b=cfg.b, method="lucene")
        # An empty document keeps its row (as the empty token, never a query token): rows = listings.
        engine.index([tokenize(d) or [""] for d in docs], show_progress=False)
        return cls(engine, len(docs), cfg)

    def save(self, folder: Path, docs: Sequence[str] | None = None) -> None:
        """Write the index into `folder` (created): lexical.json + bm25s' arrays and vocabulary (FILES),
        and the documents themselves when given (so a later version can re-index unchanged rows)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._bm25.save(folder, show_progress=False, **FILES)
        if docs is not None:
            if len(docs) != self.n_docs:
                raise ValueError(f"lexical documents: {len(docs)} given for an index of {self.n_docs}")
            with open(folder / DOCS, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
        meta = {"engine": "bm25s", **asdict(self.cfg), "n_docs": self.n_docs, "vocab": len(self._vocab)}
        (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True))

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        """Read an index written by `save` (ValueError when it is not one this code can read)."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / META).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{folder / META}: unreadable ({e})") from e
        if meta.get("tokenizer") != TOKENIZER:
            raise ValueError(f"{folder / META}: tokenizer {meta.get('tokenizer')!r}, this code has {TOKENIZER!r}")
        engine = _bm25s().BM25.load(folder, show_progress=False, allow_pickle=False, **FILES)
        n = int(meta["n_docs"])
        if int(engine.scores["num_docs"]) != n:
            raise ValueError(f"{folder}: {engine.scores['num_docs']} documents, {META} says {n}")
        return cls(engine, n, LexicalConfig(float(meta["k1"]), float(meta["b"]), meta["tokenizer"]))

    def describe(self) -> dict[str, Any]:
        return {"engine": "bm25s", "n_docs": self.n_docs, "vocab": len(self._vocab), **asdict(self.cfg)}

    def scores(self, query: str) -> np.ndarray:
        """(n,) float32 BM25 score of every document (0 where no token is shared)."""
        ids = [self._vocab[t] for t in tokenize(query) if t in self._vocab and t not in STOP_WORDS]
        if not ids:
            return np.zeros(self.n_docs, dtype=np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float32)

    def identifier_matches(self, query: str, allowed: np.ndarray | None = None,
                           max_df: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Listings that hold the query's identifiers -> (rows (m,) sorted, counts (m,) how many).

        An identifier is a word of the query with a form that mixes letters and digits ("TR-174"
        -> "tr174", "HY198") and that few listings hold: at most `max_df`, by default
        `identifier_max_df(n_docs)`: a model number, not a size most listings have. A listing
        counts once per such word whichever of its spellings it holds ("SM-G991B" and "SMG991B"
        meet, as the tokenizer means them to)."""
        cap = identifier_max_df(self.n_docs) if max_df is None else max_df
        found: dict[int, int] = {}
        indptr, indices = self._bm25.scores["indptr"], self._bm25.scores["indices"]
        for word in dict.fromkeys(query.lower().split()):
            holders: set[int] = set()
            for tok in dict.fromkeys(t for t in tokenize(word) if _mixed(t) and len(t) >= 3):
                v = self._vocab.get(tok)
                if v is not None and indptr[v + 1] - indptr[v] <= cap:
                    holders.update(int(r) for r in indices[indptr[v]:indptr[v + 1]])
            for r in holders:
                found[r] = found.get(r, 0) + 1
        rows = np.fromiter(sorted(found), np.int64, len(found))
        if allowed is not None and len(rows):
            rows = rows[allowed[rows]]
        return rows, np.asarray([found[int(r)] for r in rows], np.int64)

    def search(self, queries: Sequence[str], k: int, allowed: np.ndarray | None = None) -> SearchResult:
        """Top-k rows per query among `allowed` rows ((n,) bool, None = all), best first, ties by
        row; padded with -1 / -inf where fewer than k documents share a token with the query."""
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        out = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for i, q in enumerate(queries):
            r, s = top_k(self.scores(q), k, allowed)
            rows[i, :len(r)], out[i, :len(r)] = r, s
        return SearchResult(out, rows)


def read_documents(folder: Path) -> list[str] | None:
    """The documents a version's lexical index was built from, or None when it did not keep them."""
    path = Path(folder) / DOCS
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def top_k(scores: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a positive score (and allowed), the k best by score desc then row -> (rows, scores)."""
    cand = np.flatnonzero(scores > 0)  # usually a small fraction of the catalog
    if allowed is not None:
        cand = cand[allowed[cand]]
    if len(cand) > k:  # everything at least as good as the k-th score (ties kept, cut by row below)
        kth = -np.partition(-scores[cand], k - 1)[k - 1]
        cand = cand[scores[cand] >= kth]
    cand = cand[np.lexsort((cand, -scores[cand]))][:k]
    return cand.astype(np.int64), scores[cand].astype(np.float32)
