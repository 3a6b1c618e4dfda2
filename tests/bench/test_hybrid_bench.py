"""bench/realdata/hybrid.py's documented rule for identifier-like queries, and its sample split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.realdata.hybrid import identifier_like, split_sample  # noqa: E402


@pytest.mark.parametrize("query, expected", [
    ("SM-G991B", True), ("rtx 4070", True), ("2x4 stud", True), ("1/2 in. pvc pipe", True),
    ("90 x 200 cm", True), ("12 volt drill", True), ("behr 4616809045", True),
    ("deck over", False), ("angle bracket", False), ("3 shelf bookcase", False), ("", False),
])
def test_identifier_like_rule(query: str, expected: bool) -> None:
    assert identifier_like(query) is expected


def test_split_sample_halves_by_query(tmp_path: Path) -> None:
    rows = [{"query": f"q{i % 40}", "item_id": str(i), "relevance": 1} for i in range(200)]
    src = tmp_path / "j.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    files = split_sample(src, tmp_path / "out")
    sides = {s: {json.loads(x)["query"] for x in p.read_text().splitlines() if x} for s, p in files.items()}
    assert not sides["val"] & sides["test"] and len(sides["val"] | sides["test"]) == 40
    assert 10 <= len(sides["test"]) <= 30


def test_the_bench_applies_the_engines_identifier_boost_when_asked() -> None:
    """A dense side that prefers the wrong model number: boosted, the exact one ranks first, as the
    engine ranks it (index/rank_fusion.py); unboosted, the bench reports the plain fusion."""
    import dataclasses

    import faiss
    import numpy as np

    from bench.realdata.hybrid import prepare, rank
    from index.lexical import LexicalIndex
    from index.rank_fusion import FusionSpec
    from index.search import FaissCpuSearcher

    docs = ["Behr TR-484 deck stain cedar", "Behr TR-174 deck stain", "deck over resurfacer", "cedar fence post"]
    vectors = np.eye(4, dtype=np.float32)
    index = faiss.IndexFlatIP(4)
    index.add(vectors)
    query = "TR-174 deck stain"
    qvec = np.array([[0.9, 0.3, 0.3, 0.1]], np.float32)
    qvec /= np.linalg.norm(qvec)  # the dense side ranks TR-484 first
    prep = prepare(FaissCpuSearcher(index, vectors), LexicalIndex.build(docs), [query], qvec, 4)
    ids = ["484", "174", "over", "post"]
    plain = rank(prep, ids, dataclasses.replace(FusionSpec(), identifier_boost=False))
    boosted = rank(prep, ids, FusionSpec())  # the served default: the boost on
    assert plain[0][0] == "484" and boosted[0][0] == "174"
    assert prep.exact[0][0].tolist() == [1]
