"""The result cache: LRU order, keys, version and deny-list swaps, off switch, and in the app: a hit
skips the micro-batcher and is counted in the metrics."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from index.filters import Filter
from service.serving.cache import ResultCache, normalise_query, search_cached
from service.serving.engine import Answer, SearchRequest


def test_lru_eviction_and_refresh() -> None:
    sizes: list[int] = []
    c = ResultCache(2, on_size=sizes.append)
    for q in ("a", "b"):
        assert c.get(c.key(q, 10, 0, ()), "v1") is None
        c.put(c.key(q, 10, 0, ()), "v1", q.upper())
    assert c.get(c.key("a", 10, 0, ()), "v1") == "A"  # refresh a: b is now the oldest
    c.put(c.key("c", 10, 0, ()), "v1", "C")
    assert len(c) == 2 and c.get(c.key("b", 10, 0, ()), "v1") is None
    assert c.get(c.key("a", 10, 0, ()), "v1") == "A" and c.get(c.key("c", 10, 0, ()), "v1") == "C"
    assert (c.hits, c.misses) == (3, 3) and sizes[-1] == 2


def test_key_normalises_query_and_separates_k_offset_filters() -> None:
    assert normalise_query("  Red   MUG ") == "red mug"
    c = ResultCache(10)
    assert c.key("Red  Mug", 10, 0, ()) == c.key("red mug", 10, 0, ())
    keys = {c.key("mug", 10, 0, ()), c.key("mug", 20, 0, ()), c.key("mug", 10, 10, ()),
            c.key("mug", 10, 0, Filter.build(["mug"]).key())}
    assert len(keys) == 4


def test_version_swap_empties_and_stale_answers_are_dropped() -> None:
    c = ResultCache(10)
    k = c.key("mug", 10, 0, ())
    assert c.get(k, "v1") is None
    c.put(k, "v1", "old")
    assert c.get(k, "v1") == "old"
    assert c.get(k, "v2") is None and len(c) == 0  # swap: emptied
    c.put(k, "v1", "late answer from a batch that started before the swap")
    assert len(c) == 0 and c.get(k, "v2") is None
    c.put(k, "v2", "new")
    assert c.get(k, "v2") == "new"


def test_off_stores_nothing_and_counts_nothing() -> None:
    lookups: list[bool] = []
    c = ResultCache(0, on_lookup=lookups.append)
    k = c.key("mug", 10, 0, ())
    c.put(k, "v1", "x")
    assert not c.enabled and c.get(k, "v1") is None and len(c) == 0 and lookups == []
    with pytest.raises(ValueError, match="cache_size"):
        ResultCache(-1)


def test_search_cached_skips_submit_on_hit_and_follows_deny_generation() -> None:
    engine = SimpleNamespace(current=SimpleNamespace(version="v1"), deny_generation=0)
    calls: list[SearchRequest] = []

    async def submit(req: SearchRequest):
        calls.append(req)
        return Answer([f"hit-{len(calls)}"], "m", engine.current.version)

    async def main() -> None:
        c = ResultCache(10)
        req = SearchRequest("Red Mug", 10, 0, Filter())
        assert await search_cached(c, engine, submit, req) == (Answer(["hit-1"], "m", "v1"), False)
        assert await search_cached(c, engine, submit, SearchRequest("red  mug")) == (Answer(["hit-1"], "m", "v1"), True)
        assert len(calls) == 1
        engine.deny_generation = 1  # a listing was denied: cached pages may show it
        assert (await search_cached(c, engine, submit, req))[1] is False and len(calls) == 2
        engine.current.version = "v2"
        assert (await search_cached(c, engine, submit, req))[0].index_version == "v2" and len(calls) == 3
        off = ResultCache(0)
        await search_cached(off, engine, submit, req)
        await search_cached(off, engine, submit, req)
        assert len(calls) == 5

    asyncio.run(main())


def test_app_hit_skips_the_queue_and_is_counted(client) -> None:
    svc = client.app.state.svc
    assert svc.cache.enabled
    first = client.post("/search", json={"query": "Striped wool scarf", "k": 5})
    assert first.status_code == 200
    batches = svc.batcher.batches
    again = client.get("/search", params={"q": "striped   WOOL scarf", "k": 5})
    assert again.status_code == 200 and svc.batcher.batches == batches  # answered without a batch
    assert [h["id"] for h in again.json()["results"]] == [h["id"] for h in first.json()["results"]]
    other_k = client.post("/search", json={"query": "Striped wool scarf", "k": 6})
    assert other_k.status_code == 200 and svc.batcher.batches == batches + 1
    text = client.get("/metrics").text
    assert 'search_cache_lookups_total{result="hit"}' in text and "search_cache_entries " in text
    for stage in ("queue_wait", "tokenize", "encode", "search", "metadata", "total"):
        assert f'search_stage_seconds_count{{stage="{stage}"}}' in text, stage
    assert "search_batch_size_count" in text and "search_queue_depth " in text
    import faiss

    assert faiss.cvar.distance_compute_blas_threshold == svc.settings.search_blas_threshold  # set by the app
