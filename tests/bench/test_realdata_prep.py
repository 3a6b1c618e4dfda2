"""The reusable parts of bench/realdata on tiny made-up data (never the real files): the query
split, BM25 against a naive reference, self-rank recall, run specs, and the per-view re-embedding
of a built version (against the vectors the build indexed)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench.realdata.lexical import Bm25, tokenize  # noqa: E402
from bench.realdata.runs import parse_spec  # noqa: E402
from bench.realdata.scoring import rank_recalls, score_sets, self_ranks  # noqa: E402
from bench.realdata.split import normalise, side, write_negatives, write_split  # noqa: E402

# ---------------------------------------------------------------------------------- split


def test_side_depends_on_the_normalised_text_only() -> None:
    assert normalise("  Angle   BRACKET ") == "angle bracket"
    for q in ("angle bracket", "deck over", "rain shower head", "l bracket", "1/2 in. pvc pipe"):
        assert side(q) == side(q.upper()) == side(f"  {q.replace(' ', '   ')} ")


def test_side_fractions_are_about_right() -> None:
    counts = Counter(side(f"query number {i}") for i in range(20_000))
    assert abs(counts["test"] / 20_000 - 0.2) < 0.015
    assert abs(counts["val"] / 20_000 - 0.8 * 0.1) < 0.01


def test_write_split(tmp_path: Path) -> None:
    rows = []
    for i in range(300):
        q = f"Query {i}"
        rows += [{"query": q, "item_id": f"A{i}", "relevance": 3.0}, {"query": q.lower(), "item_id": f"B{i}", "relevance": 1.67},
                 {"query": q, "item_id": f"C{i}", "relevance": 2.0}]
    src = tmp_path / "judgments.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = write_split(src, tmp_path / "out")
    out = tmp_path / "out"
    pairs = [json.loads(x) for x in (out / "train_interactions.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (out / "test_judgments.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (out / "val_judgments.jsonl").read_text().splitlines()]
    # relevance >= 2 only, weight = relevance - 1
    assert {(p["item_id"][0], p["weight"]) for p in pairs} == {("A", 2.0), ("C", 1.0)}
    # every row of a test query (all spellings) goes to test, none to training
    test_q = {normalise(r["query"]) for r in test}
    assert test_q and not test_q & {normalise(p["query"]) for p in pairs}
    assert all(side(r["query"]) == "test" for r in test) and all(side(r["query"]) == "val" for r in val)
    assert len(test) + len(val) + summary["rows"]["train"] == len(rows)
    assert summary["training_pairs"]["train"] == len(pairs)
    assert summary["training_pairs"]["trainval"] == len(pairs) + 2 * len(val) // 3
    # judged negatives: the train queries' rows below 2, nothing of a validation or test query
    path, n = write_negatives(src, out)
    negs = [json.loads(x) for x in path.read_text().splitlines()]
    assert n == len(negs) == len(pairs) // 2 and {r["item_id"][0] for r in negs} == {"B"}
    assert all(side(r["query"]) == "train" for r in negs) and set(negs[0]) == {"query", "item_id"}


# ---------------------------------------------------------------------------------- BM25


def naive_bm25(docs: list[list[str]], query: list[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """Lucene BM25 (>= 8, without the constant (k1 + 1) factor): idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
    tf / (tf + k1 (1 - b + b |d| / avg |d|))."""
    n = len(docs)
    avg = sum(len(d) for d in docs) / n
    out = np.zeros(n)
    for t in set(query):
        df = sum(t in d for d in docs)
        if not df:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, d in enumerate(docs):
            tf = d.count(t)
            out[i] += idf * tf / (tf + k1 * (1 - b + b * len(d) / avg)) if tf else 0.0
    return out


def test_tokenize() -> None:
    assert tokenize("BEHR Premium 1-gal. #SC-141, Wood&Concrete") == ["behr", "premium", "1", "gal", "sc", "141", "wood",
                                                                       "concrete"]
    assert tokenize("") == []


def test_bm25_matches_a_naive_reference_and_drops_non_matches() -> None:
    docs = ["red wool scarf", "blue ceramic mug mug", "wool socks, red stripes", "oak table", "red red red mug"]
    bm25 = Bm25(docs)
    for q in ("red mug", "wool", "red scarf wool", "table lamp"):
        want = naive_bm25([tokenize(d) for d in docs], tokenize(q))
        np.testing.assert_allclose(bm25.scores(q), want, rtol=1e-5, atol=1e-6)
    assert bm25.scores("nothing here").sum() == 0
    top = bm25.top(["red mug", "oak", "zzz"], k=10)
    ref = naive_bm25([tokenize(d) for d in docs], ["red", "mug"])
    assert top[0] == [int(i) for i in np.argsort(-ref, kind="stable") if ref[i] > 0]
    assert top[1] == [3] and top[2] == []


# ---------------------------------------------------------------------------------- scoring


def test_self_ranks_count_strictly_higher_scores() -> None:
    scores = np.array([[0.9, 0.1, 0.9], [0.2, 0.1, 0.3], [0.0, 0.0, 0.5]])
    ranks = self_ranks(scores, np.array([0, 1, 2]))
    assert ranks.tolist() == [0, 2, 0]  # a tie with the listing itself counts for it
    rec = rank_recalls(ranks, ks=(1, 10))
    assert rec["recall@1"] == pytest.approx(2 / 3) and rec["recall@10"] == 1.0 and rec["n_queries"] == 3
    assert rec["ci"]["recall@1"][0] <= 2 / 3 <= rec["ci"]["recall@1"][1]


def test_score_sets_hand_computed() -> None:
    ranked = [["a", "x", "b"], ["y", "z", "c"]]
    relevant = [{"a": 1.0, "b": 1.0}, {"c": 1.0}]
    m = score_sets(ranked, relevant, (1, 3))
    assert m["recall@1"] == pytest.approx((0.5 + 0) / 2)
    assert m["recall@3"] == 1.0
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3) / 2)
    ndcg_q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + 0.5) / 2)
    assert set(m["ci"]) >= {"recall@1", "recall@3", "ndcg@10"}


# ---------------------------------------------------------------------------------- run specs


def test_run_specs() -> None:
    run = parse_spec("ft:epochs=2,lr=0.001,trainable_layers=2")
    assert run.objective == "ft" and run.build == {"epochs": 2, "trainable_layers": 2} and run.train == {"lr": 0.001}
    assert run.name == "ft_epochs2_lr0p001_trainable_layers2"
    assert parse_spec("clip").name == "clip"
    with pytest.raises(SystemExit, match="unknown key"):
        parse_spec("ft:colour=red")
    judged = parse_spec("ft:negatives=1,trainable_layers=3")
    assert judged.inputs == {"negatives": 1} and judged.build == {"trainable_layers": 3}
    assert judged.name == "ft_negatives1_trainable_layers3"
    assert parse_spec("ft:negatives=0").name == "ft"
    with pytest.raises(SystemExit, match="negatives takes 0 or 1"):
        parse_spec("ft:negatives=yes")


# ---------------------------------------------------------------------------------- a built version


@pytest.mark.slow
def test_model_views_reproduce_the_indexed_vectors(tiny_sample: Path, tiny_build) -> None:
    from bench.realdata.modeleval import model_views, query_rankings
    from model.config import IMAGE_OTHER, ImageConfig
    from model.data.catalog import load_catalog
    from model.data.views import build_view_table
    from model.encoders.image_features import ImageFeaturizer

    listings = load_catalog(tiny_sample / "catalog.jsonl").listings
    views = build_view_table(listings)
    feats = ImageFeaturizer(ImageConfig(), cache_dir=tiny_build.path.parent.parent.parent / "image-cache").featurize(
        views.image_paths)
    mv = model_views(tiny_build.path, views, feats.features, feats.ok)
    indexed = np.load(tiny_build.path / "vectors.npy").astype(np.float32)
    np.testing.assert_allclose(mv.fused, indexed, atol=2e-3)
    # removing a photo changes exactly the listings that have it (among the fused slots)
    col = mv.slot_types.index(IMAGE_OTHER)
    photo = int(mv.rows[np.flatnonzero(mv.present[:, col])[0], col])
    held = mv.without_image(photo)
    has = (mv.rows == photo).any(axis=1)
    assert has.any()
    np.testing.assert_array_equal(held[~has], mv.fused[~has])
    assert np.abs(held[has] - mv.fused[has]).max() > 1e-4
    np.testing.assert_allclose(np.linalg.norm(held, axis=1), 1.0, atol=1e-5)
    ranked, info = query_rankings(tiny_build.path, ["red scarf", "mug"], k=5)
    assert len(ranked) == 2 and all(len(r) == 5 for r in ranked) and info["index_key"]


def test_paired_difference() -> None:
    from bench.realdata.scoring import paired_difference

    a, b = [1.0, 0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 0.0]
    d = paired_difference(a, b)
    assert d["mean"] == pytest.approx(0.5) and d["n"] == 4 and d["ci"][0] <= 0.5 <= d["ci"][1]
    same = paired_difference(a, a)
    assert same["mean"] == 0 and same["ci"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="paired"):
        paired_difference(a, b[:3])
