"""Ranking metrics against hand-computed cases: graded nDCG, ties, no relevant item, recall."""

from __future__ import annotations

import math

import pytest

from model.eval.metrics import (
    bootstrap_ci,
    mrr_at_k,
    ndcg_at_k,
    per_query_recall,
    ranking_metrics,
    recall_at_k,
)


def test_recall_counts_relevant_found_over_all_relevant() -> None:
    ranked = [["a", "x", "b", "y"], ["z", "q"]]
    relevant = [{"a": 1.0, "b": 1.0, "c": 1.0}, {"q": 2.0}]
    assert per_query_recall(ranked, relevant, 2) == [1 / 3, 1.0]
    assert recall_at_k(ranked, relevant, 3) == pytest.approx((2 / 3 + 1) / 2)


def test_graded_ndcg_by_hand() -> None:
    # gains 2 at rank 2 and 1 at rank 3; ideal order puts the 2 first, then the 1.
    ranked = [["n", "g2", "g1"]]
    relevant = [{"g2": 2.0, "g1": 1.0}]
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k([["g2", "g1"]], relevant, 10) == pytest.approx(1.0)
    # the cut-off applies to the ideal list too
    assert ndcg_at_k([["g1"]], [{"g2": 2.0, "g1": 1.0}], 1) == pytest.approx(1 / 2)


def test_ties_in_relevance_do_not_matter_for_the_ideal() -> None:
    relevant = [{"a": 1.0, "b": 1.0}]
    assert ndcg_at_k([["a", "b"]], relevant, 10) == ndcg_at_k([["b", "a"]], relevant, 10) == pytest.approx(1.0)


def test_mrr() -> None:
    assert mrr_at_k([["x", "y", "a"], ["a"], ["x"]], [{"a": 1}, {"a": 1}, {"a": 1}], 10) == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert mrr_at_k([["x", "y", "a"]], [{"a": 1}], 2) == 0.0


def test_queries_without_relevant_items_are_skipped_and_counted() -> None:
    m = ranking_metrics([["a"], ["b"]], [{"a": 1.0}, {}], recall_ks=(1,))
    assert m["recall@1"] == 1.0 and m["n_queries"] == 1 and m["n_skipped"] == 1
    assert math.isnan(recall_at_k([["a"]], [{}], 1))


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="ranked has 1 queries but relevant has 2"):
        recall_at_k([["a"]], [{}, {}], 1)


def test_bootstrap_ci_brackets_the_mean() -> None:
    values = [0.0, 1.0] * 50
    lo, hi = bootstrap_ci(values, n_boot=500, seed=1)
    assert lo < 0.5 < hi and hi - lo < 0.3
