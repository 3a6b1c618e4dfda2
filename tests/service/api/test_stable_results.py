"""A request's answer is a function of the request and the loaded version only (issue 15, items
1-3): for every index family the service can choose (Flat, HNSW, IVF-Flat, IVF-PQ with the
production re-rank) and every mode, a request answered alone equals the same request inside a mixed
batch; pages continue one ranking up to max_offset; a listing's score is the same with a filter.

The engine runs over a hand-made LoadedVersion: a query encoder stub that maps each query to a fixed
vector (the real encoder's fp rounding is not what is tested here), fp16 vectors.npy beside an fp32
index as the pipeline writes them, a real BM25 index and real filter columns."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from index.build import RERANK_FACTOR, build_index
from index.filters import Filter, FilterColumns
from index.lexical import LexicalIndex
from index.rank_fusion import FusionSpec
from index.search import FaissCpuSearcher
from service.serving.engine import Engine, LoadedVersion, SearchRequest
from service.serving.settings import Settings

N, D = 3000, 16
MAX_OFFSET, MAX_K = 1000, 500  # the settings' defaults
FAMILIES = {  # the served parameters of each family (IVF-PQ: the production re-rank)
    "Flat": {},
    "HNSW16,Flat": {"efSearch": 16},
    "IVF32,Flat": {"nprobe": 4},
    "IVF32,PQ4x4": {"nprobe": 4, "rerank": RERANK_FACTOR},
}
MODES = [("dense", None), ("lexical", None), ("hybrid", FusionSpec("weighted")), ("hybrid", FusionSpec("rrf"))]
WORDS = [f"w{i}" for i in range(60)]


class StubEncoder:
    """Query -> a fixed unit vector (seeded per query text)."""

    dim = D

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def tokenize(self, queries: list[str]) -> tuple[list[str], None]:
        return queries, None

    def encode_tokens(self, queries: list[str], _mask: Any) -> np.ndarray:
        out = []
        for q in queries:
            v = np.random.default_rng(abs(hash(q)) % 2**32).normal(size=D)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, np.float32)  # (B, d)


class StubStore:
    def get(self, rows: list[int]) -> dict[int, dict[str, Any]]:
        return {r: {"id": f"L{r}", "title": "", "image": None} for r in rows}


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, D))
    x = centres[rng.integers(0, 20, N)] + 0.6 * rng.normal(size=(N, D))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    docs = [" ".join(rng.choice(WORDS, 6)) for _ in range(N)]
    cats = rng.choice(["a", "b", "c"], N, p=[0.6, 0.3, 0.1])
    cols = FilterColumns.from_rows(list(cats), [float(p) for p in rng.uniform(1, 100, N)], [{}] * N)
    return {"x": x, "vectors": x.astype(np.float16), "lexical": LexicalIndex.build(docs), "cols": cols,
            "indexes": {key: build_index(x, key).index for key in FAMILIES}}


def engine_for(world: dict[str, Any], key: str, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    searcher = FaissCpuSearcher(world["indexes"][key], world["vectors"], FAMILIES[key])
    lv = LoadedVersion("v1", {"model_digest": "0" * 12}, StubEncoder(), searcher, StubStore(), world["cols"],  # type: ignore[arg-type]
                       world["lexical"])
    e = Engine(Settings(artifacts=tmp_path_factory.mktemp("a"), reload_poll_s=0))
    e._current = lv
    return e


def answer(e: Engine, reqs: list[SearchRequest]) -> list[list[tuple[str, float]]]:
    return [[(h.id, h.score) for h in hits] for hits in e.search_batch(reqs).hits]


def queries(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 2)) for _ in range(n)]


@pytest.mark.parametrize("key", list(FAMILIES))
def test_a_request_alone_equals_it_inside_a_mixed_batch(world, key: str, tmp_path_factory) -> None:
    e = engine_for(world, key, tmp_path_factory)
    rng = np.random.default_rng(1)
    filters = [Filter(), Filter(), Filter.build(["a"]), Filter.build(["c"])]
    reqs = []
    for q in queries(2, 48):
        mode, spec = MODES[rng.integers(len(MODES))]
        k = int(rng.choice([1, 5, 10, 37, MAX_K]))
        offset = int(rng.choice([0, 0, 10, 95, 400]))
        reqs.append(SearchRequest(q, k, offset, filters[rng.integers(len(filters))], mode, spec))
    alone = [answer(e, [r])[0] for r in reqs]
    batched = answer(e, reqs)
    changed = [i for i in range(len(reqs)) if alone[i] != batched[i]]
    assert not changed, [(reqs[i], alone[i][:3], batched[i][:3]) for i in changed[:3]]
    assert sum(len(a) for a in alone) > 0


@pytest.mark.parametrize("key", list(FAMILIES))
@pytest.mark.parametrize("mode,spec", MODES)
@pytest.mark.parametrize("flt", [Filter(), Filter.build(["b"])], ids=["all", "filtered"])
def test_pages_continue_one_ranking_up_to_max_offset(world, key: str, mode: str, spec, flt: Filter,
                                                     tmp_path_factory) -> None:
    e = engine_for(world, key, tmp_path_factory)
    qs = queries(3, 3)
    for k in (10, 45):
        whole = answer(e, [SearchRequest(q, 2 * k, 0, flt, mode, spec) for q in qs])
        p1 = answer(e, [SearchRequest(q, k, 0, flt, mode, spec) for q in qs])
        p2 = answer(e, [SearchRequest(q, k, k, flt, mode, spec) for q in qs])
        for w, a, b in zip(whole, p1, p2, strict=True):
            assert a + b == w, (key, mode, k)
    k = 50
    seen: list[list[str]] = [[] for _ in qs]
    for offset in range(0, MAX_OFFSET + 1, k):
        for s, hits in zip(seen, answer(e, [SearchRequest(q, k, offset, flt, mode, spec) for q in qs]), strict=True):
            s.extend(i for i, _ in hits)
    for s in seen:
        assert len(s) == len(set(s)), (key, mode, len(s) - len(set(s)))  # no listing on two pages
    if mode == "dense" and not (key.startswith("IVF") and flt.empty):  # (nprobe 4 of 32 lists: ~400 rows)
        n_ok = N if flt.empty else int(world["cols"].mask(flt).sum())
        assert all(len(s) == min(MAX_OFFSET + k, n_ok) for s in seen)  # and none went missing


@pytest.mark.parametrize("key", list(FAMILIES))
@pytest.mark.parametrize("mode,spec", [MODES[0], MODES[2]])
def test_a_listing_scores_the_same_with_a_filter_that_keeps_it(world, key: str, mode: str, spec,
                                                               tmp_path_factory) -> None:
    e = engine_for(world, key, tmp_path_factory)
    cols: FilterColumns = world["cols"]
    same = 0
    for q in queries(4, 6):
        plain = dict(answer(e, [SearchRequest(q, 20, 0, Filter(), mode, spec)])[0])
        for cat in ("a", "c"):
            kept = dict(answer(e, [SearchRequest(q, 20, 0, Filter.build([cat]), mode, spec)])[0])
            for lid in set(plain) & set(kept):
                assert cols.category_codes[int(lid[1:])] == cols.category_vocab[cat]
                if mode == "dense":
                    assert plain[lid] == kept[lid], (key, q, lid, plain[lid], kept[lid])
                same += 1
    assert same > 0
