"""The lexical index against a naive BM25 and exact token matches on a tiny corpus."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from index.lexical import STOP_WORDS, LexicalIndex, tokenize, top_k

DOCS = [
    "Samsung Galaxy S21 SM-G991B 128 GB phantom grey",
    "Galaxy S21 case, clear",
    "GeForce RTX4070 graphics card 12 GB",
    "Gaming PC with RTX 4070 and 32 GB RAM",
    "Mattress 90x200 cm, medium firm",
    "Bed frame 90 x 200 cm oak",
    "2x4 stud 8 ft",
    "",  # an empty listing keeps its row
]


def naive_bm25(docs: list[str], query: str, k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """Lucene BM25 written out: idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + k1 (1 - b + b dl / avgdl))."""
    toks = [tokenize(d) or [""] for d in docs]
    n = len(docs)
    avgdl = sum(len(t) for t in toks) / n
    df = Counter(t for doc in toks for t in set(doc))
    out = np.zeros(n)
    for q in tokenize(query):
        if q not in df or q in STOP_WORDS:  # the query's stop words count for nothing
            continue
        idf = math.log(1 + (n - df[q] + 0.5) / (df[q] + 0.5))
        for i, doc in enumerate(toks):
            tf = doc.count(q)
            out[i] += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avgdl))
    return out


def test_tokenize_adds_identifier_forms() -> None:
    assert tokenize("SM-G991B") == ["sm", "g991b", "g", "991", "b", "smg991b"]
    assert tokenize("RTX4070") == ["rtx4070", "rtx", "4070"]
    assert tokenize("90x200 cm") == ["90x200", "90", "x", "200", "cm"]
    assert tokenize("3/4 in. 1.5 gal") == ["3", "4", "in", "1", "5", "gal"]  # no letters: nothing glued
    assert tokenize("  ") == []


@pytest.mark.parametrize("query", ["galaxy s21", "rtx 4070", "smg991b", "90x200", "GB card", "oak bed 200", "zzz",
                                   "the galaxy with a case", "pc with the rtx"])
def test_scores_match_naive_bm25(query: str) -> None:
    lex = LexicalIndex.build(DOCS)
    np.testing.assert_allclose(lex.scores(query), naive_bm25(DOCS, query), rtol=1e-5, atol=1e-6)


def test_stop_words_of_a_query_score_nothing() -> None:
    lex = LexicalIndex.build([*DOCS, "The best of the best", "the the the lamp"])
    for q in ("the", "The", "of the", "with and for"):
        assert not lex.scores(q).any(), q
        assert (lex.search([q], 3).rows == -1).all()
    np.testing.assert_array_equal(lex.scores("the lamp"), lex.scores("lamp"))
    assert "in" not in STOP_WORDS and "x" not in STOP_WORDS


def test_identifier_queries_find_their_listing_first() -> None:
    lex = LexicalIndex.build(DOCS)
    cases = {"SMG991B": 0, "sm-g991b": 0, "sm g991b": 0, "rtx4070": 2, "RTX 4070 graphics": 2, "2x4": 6}
    res = lex.search(list(cases), 3)
    for (query, row), got in zip(cases.items(), res.rows, strict=True):
        assert got[0] == row, (query, got)


def test_search_filters_pads_and_breaks_ties_by_row() -> None:
    lex = LexicalIndex.build(["red mug", "red mug", "blue mug", "red mug", "plate"])
    res = lex.search(["red mug", "plate", "nothing"], 3)
    assert res.rows[0].tolist() == [0, 1, 3]  # equal scores: lower row first
    assert res.rows[1].tolist() == [4, -1, -1] and np.isneginf(res.scores[1, 1:]).all()
    assert (res.rows[2] == -1).all()
    allowed = np.array([False, True, True, False, True])
    res = lex.search(["red mug"], 5, allowed)
    assert res.rows[0].tolist() == [1, 2, -1, -1, -1]  # exact token matches among allowed rows only
    rows, scores = top_k(np.array([0, 2, 2, 1, 0], np.float32), 2)
    assert rows.tolist() == [1, 2] and scores.tolist() == [2, 2]


def test_save_load_roundtrip(tmp_path: Path) -> None:
    lex = LexicalIndex.build(DOCS)
    lex.save(tmp_path / "lexical")
    again = LexicalIndex.load(tmp_path / "lexical")
    assert again.n_docs == len(DOCS) and again.describe() == lex.describe()
    for q in ("galaxy", "rtx 4070", "oak"):
        np.testing.assert_array_equal(again.scores(q), lex.scores(q))
    (tmp_path / "lexical" / "lexical.json").write_text('{"tokenizer": "other"}')
    with pytest.raises(ValueError, match="tokenizer"):
        LexicalIndex.load(tmp_path / "lexical")


def test_bm25s_does_not_log_at_debug() -> None:
    import logging

    LexicalIndex.build(DOCS)
    assert logging.getLogger("bm25s").getEffectiveLevel() == logging.WARNING
