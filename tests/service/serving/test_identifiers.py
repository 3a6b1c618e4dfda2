"""Exact model numbers in the default (hybrid) mode: a query whose identifier token ("TR-174",
"HY198") a listing holds ranks that listing first, even when the dense side prefers a near-miss
("TR-484"); filters still apply, pages still continue, and the evaluation fuses the same way."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from index.build import build_index
from index.filters import Filter, FilterColumns
from index.lexical import LexicalIndex
from index.rank_fusion import FusionSpec
from index.search import FaissCpuSearcher
from service.build.evaluation import mode_rankings
from service.serving.engine import Engine, LoadedVersion, SearchRequest, fusion_spec
from service.serving.settings import Settings

N, D = 300, 16
TITLES = {0: "steel door handle TR-174 satin", 1: "steel door handle TR-484 satin", 2: "HY198 desk lamp",
          3: "desk lamp hy-198 compatible shade"}


class NearMissEncoder:
    """Every query encodes to the TR-484 listing's own vector: the dense side prefers the near-miss."""

    dim = D

    def __init__(self, target: np.ndarray) -> None:
        self.lock = threading.Lock()
        self.target = target

    def tokenize(self, queries: list[str]) -> tuple[list[str], None]:
        return queries, None

    def encode_tokens(self, queries: list[str], _mask: Any) -> np.ndarray:
        return np.repeat(self.target[None], len(queries), axis=0)  # (B, d)


class Store:
    def get(self, rows: list[int]) -> dict[int, dict[str, Any]]:
        return {r: {"id": f"L{r}", "title": TITLES.get(r, ""), "image": None} for r in rows}


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    words = ["steel", "door", "handle", "satin", "desk", "lamp", "shade", "oak"]
    docs = [TITLES.get(i, " ".join(rng.choice(words, 5))) for i in range(N)]
    cats = ["hardware" if i != 0 else "doors" for i in range(N)]
    return {"x": x, "lexical": LexicalIndex.build(docs),
            "cols": FilterColumns.from_rows(cats, [1.0] * N, [{}] * N)}


def engine(world: dict[str, Any], tmp_path_factory, **settings: Any) -> Engine:
    x = world["x"]
    searcher = FaissCpuSearcher(build_index(x, "Flat").index, x.astype(np.float16), {})
    lv = LoadedVersion("v1", {"model_digest": "0" * 12}, NearMissEncoder(x[1]), searcher, Store(),  # type: ignore[arg-type]
                       world["cols"], world["lexical"])
    e = Engine(Settings(artifacts=tmp_path_factory.mktemp("a"), reload_poll_s=0, **settings))
    e._current = lv
    return e


def ids(e: Engine, query: str, k: int = 5, offset: int = 0, flt: Filter | None = None,
        spec: FusionSpec | None = None) -> list[str]:
    (hits,) = e.search_batch([SearchRequest(query, k, offset, flt or Filter(), "hybrid", spec)]).hits
    return [h.id for h in hits]


@pytest.mark.parametrize("method", ["weighted", "rrf"])
def test_an_exact_model_number_ranks_first_in_hybrid(world, tmp_path_factory, method: str) -> None:
    e = engine(world, tmp_path_factory, fusion=method)
    assert ids(e, "TR-174", k=3)[0] == "L0"
    assert ids(e, "tr174")[0] == "L0"
    assert ids(e, "door handle TR-174")[0] == "L0"
    assert set(ids(e, "HY198")[:2]) == {"L2", "L3"}  # "HY198" and "hy-198" are one identifier
    # without the boost the dense side's near-miss wins: what the shopper saw before
    off = FusionSpec(method, identifier_boost=False)
    assert ids(e, "TR-174", spec=off)[0] == "L1"
    # a query without an identifier is fused exactly as before
    plain = FusionSpec(method)
    assert ids(e, "steel door handle", k=20, spec=plain) == ids(e, "steel door handle", k=20, spec=off)


def test_filters_pages_and_evaluation_agree_with_the_boost(world, tmp_path_factory) -> None:
    e = engine(world, tmp_path_factory)
    assert "L0" not in ids(e, "TR-174", k=10, flt=Filter.build(["hardware"]))  # the filter still holds
    whole = ids(e, "TR-174 door", k=20)
    assert ids(e, "TR-174 door", k=10) + ids(e, "TR-174 door", k=10, offset=10) == whole
    assert len(set(whole)) == len(whole)
    x = world["x"]
    searcher = FaissCpuSearcher(build_index(x, "Flat").index, x.astype(np.float16), {})
    ranked = mode_rankings(searcher, world["lexical"], [f"L{i}" for i in range(N)], ["TR-174 door"],
                           x[1][None], 20, fusion_spec(e.settings))
    assert ranked["hybrid"][0] == whole


def test_spellings_of_one_model_number_count_once() -> None:
    lex = LexicalIndex.build(["phone SM-G991B case", "phone SMG991B case", "phone case"] + ["case"] * 300)
    rows, counts = lex.identifier_matches("SM-G991B")
    assert rows.tolist() == [0, 1] and counts.tolist() == [1, 1]  # was 2 for the hyphenated one
    rows, counts = lex.identifier_matches("SM-G991B case x7000")
    assert counts.tolist() == [1, 1]


def test_a_common_letters_digits_token_is_not_an_identifier() -> None:
    docs = [f"cable usb2 {i}" for i in range(80)] + ["cable usbc adapter"] + ["plain"] * 9000
    lex = LexicalIndex.build(docs)
    rows, counts = lex.identifier_matches("usb2 cable")  # 80 listings hold usb2: a spec, not a model number
    assert len(rows) == 0
    rows, counts = lex.identifier_matches("usb2 cable", max_df=100)
    assert len(rows) == 80 and (counts == 1).all()
    small = LexicalIndex.build(["bed 90x200"] * 4 + ["bed"] * 296)  # 4 of 300 hold it: over 1%, a size
    assert len(small.identifier_matches("90x200")[0]) == 0
    allowed = np.zeros(len(docs), bool)
    allowed[:3] = True
    assert lex.identifier_matches("usb2", allowed=allowed, max_df=100)[0].tolist() == [0, 1, 2]
