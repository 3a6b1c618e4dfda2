"""Hybrid retrieval: fusion by hand, the engine's modes with filters and pages, the cache key,
versions without a lexical index, and a roll-back that brings its own lexical index back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import wait_ready

from index.filters import Filter
from index.lexical import LexicalIndex
from index.rank_fusion import FusionSpec, hybrid_one, rrf, weighted
from index.store.artifacts import MANIFEST, ArtifactStore, sha256_file
from service.api.app import create_app
from service.serving.cache import ResultCache, search_cached
from service.serving.engine import Answer, Engine, SearchRequest
from service.serving.settings import Settings


def test_rrf_against_hand_computed_scores() -> None:
    dense, lexical = np.array([5, 3, 9]), np.array([3, 7])
    rows, scores = rrf([dense, lexical], [1.0, 1.0], 60)
    # 3: 1/62 + 1/61; 5: 1/61; 7: 1/62; 9: 1/63
    assert rows.tolist() == [3, 5, 7, 9]
    np.testing.assert_allclose(scores, [1 / 62 + 1 / 61, 1 / 61, 1 / 62, 1 / 63], rtol=1e-6)
    rows, scores = rrf([dense, lexical], [2.0, 1.0], 60)  # 3: .0486, 5: .0328, 9: .0317, 7: .0161
    assert rows.tolist() == [3, 5, 9, 7]
    rows, _ = rrf([np.array([4, 2]), np.array([2, 4])], [1.0, 1.0], 60)
    assert rows.tolist() == [2, 4]  # equal scores: the lower row first


def test_weighted_against_hand_computed_scores() -> None:
    # dense [.9 .5 .7] -> [1 0 .5]; lexical [0 4 2] -> [0 1 .5]; 0.7 d + 0.3 l = [.7 .3 .5]
    rows, scores = weighted(np.array([1, 2, 3]), np.array([0.9, 0.5, 0.7]), np.array([0.0, 4.0, 2.0]), 0.7, 0.3)
    assert rows.tolist() == [1, 3, 2]
    np.testing.assert_allclose(scores, [0.7, 0.5, 0.3], rtol=1e-6)
    # hybrid_one looks the missing scores up for the union of both (cut) lists
    dense_s = {1: 0.9, 2: 0.5, 3: 0.7, 8: 0.1}
    lex_s = {1: 0.0, 2: 4.0, 3: 2.0, 8: 9.0}
    spec = FusionSpec("weighted", dense_weight=0.7, lexical_weight=0.3)
    rows, scores = hybrid_one(np.array([1, 3, -1]), np.array([2, 3, 8]), spec, depth=2,
                              dense_of=lambda r: np.array([dense_s[int(x)] for x in r]),
                              lexical_of=lambda r: np.array([lex_s[int(x)] for x in r]))
    assert rows.tolist() == [1, 3, 2]  # row 8 is below the depth of the lexical list


@pytest.mark.parametrize("bad", [dict(method="max"), dict(rrf_k=-1), dict(dense_weight=0, lexical_weight=0),
                                 dict(candidates=0), dict(dense_weight=float("nan")), dict(lexical_weight=1e308)])
def test_fusion_spec_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        FusionSpec(**bad)


@pytest.fixture(scope="module")
def engine(tiny_build) -> Engine:
    e = Engine(Settings(artifacts=tiny_build.path.parent.parent, reload_poll_s=0, warmup_queries=1))
    e.load()
    return e


def test_every_mode_with_filter_and_pages_returns_k_items(engine: Engine) -> None:
    lv = engine.current
    assert lv.lexical is not None and lv.lexical.n_docs == lv.n_items
    category = lv.store.get([0])[0]["category"]
    flt = Filter.build([category])
    allowed = lv.filters.mask(flt)
    k = 3
    assert allowed.sum() >= 2 * k
    for mode in ("dense", "hybrid", "lexical"):
        for spec in (None, FusionSpec("weighted", dense_weight=0.6, lexical_weight=0.4)):
            query = "mug" if mode == "lexical" else "handmade gift"
            reqs = [SearchRequest(query, 2 * k, 0, flt, mode, spec), SearchRequest(query, k, 0, flt, mode, spec),
                    SearchRequest(query, k, k, flt, mode, spec)]
            res = engine.search_batch(reqs)
            assert res.modes == [mode] * 3
            whole, p1, p2 = ([h.id for h in hits] for hits in res.hits)
            if mode != "lexical":  # a lexical list may be shorter: only matching listings
                assert len(p1) == len(p2) == k
            assert p1 + p2 == whole  # pages of one ranking
            rows = lv.store.rows_of(whole)
            assert allowed[rows].all()
    stages = engine.search_batch([SearchRequest("red mug", 5, 0, Filter(), "hybrid")]).stages
    assert {"encode", "search", "lexical", "fuse"} <= set(stages)


def test_hybrid_lifts_an_exact_title_match(engine: Engine) -> None:
    lv = engine.current
    titles = [r.title for r in lv.store.records()]
    hits = engine.search_batch([SearchRequest(t, 5, 0, Filter(), "hybrid") for t in titles[:20]]).hits
    found = sum(t == h[0].title for t, h in zip(titles[:20], hits, strict=True))
    assert found >= 16, found


def test_cache_key_distinguishes_modes_and_weights() -> None:
    cache = ResultCache(100)

    class Current:
        version, deny_generation = "v1", 0

    class FakeEngine:
        current, deny_generation = Current, 0

    calls: list[SearchRequest] = []

    async def submit(req: SearchRequest):
        calls.append(req)
        return Answer([], "m", "v1", req.mode)

    import asyncio

    w1, w2 = FusionSpec("weighted", dense_weight=1.0), FusionSpec("weighted", dense_weight=2.0)
    reqs = [SearchRequest("mug", 10, 0, Filter(), "dense"), SearchRequest("mug", 10, 0, Filter(), "hybrid"),
            SearchRequest("Mug", 10, 0, Filter(), "hybrid"), SearchRequest("mug", 10, 0, Filter(), "hybrid", w1),
            SearchRequest("mug", 10, 0, Filter(), "hybrid", w2), SearchRequest("mug", 10, 0, Filter(), "lexical")]
    cached = [asyncio.run(search_cached(cache, FakeEngine, submit, r))[1] for r in reqs]
    assert cached == [False, False, True, False, False, False]
    assert len(calls) == 5


def _drop_lexical(artifacts: Path, version: str) -> None:
    """Make `version` look like one built before the lexical index existed."""
    folder = artifacts / "versions" / version
    for p in folder.glob("lexical.*"):
        p.unlink()
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest.pop("lexical")
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("lexical.")}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_version_without_lexical_index_falls_back_to_dense(artifacts_copy: Path, tiny_build) -> None:
    _drop_lexical(artifacts_copy, tiny_build.version)
    settings = Settings(artifacts=artifacts_copy, reload_poll_s=0, warmup_queries=1)
    with TestClient(create_app(settings)) as client:
        ready = wait_ready(client)
        assert ready["search_modes"]["lexical_index"] is False and "fallback" in ready["search_modes"]
        body = client.post("/search", json={"query": "red mug", "k": 4, "mode": "hybrid"}).json()
        assert body["mode"] == "dense" and "no lexical index" in body["fallback"] and len(body["results"]) == 4
        dense = client.post("/search", json={"query": "red mug", "k": 4, "mode": "dense"}).json()
        assert "fallback" not in dense and [h["id"] for h in dense["results"]] == [h["id"] for h in body["results"]]
        got = client.get("/search", params={"q": "red mug", "k": 4, "mode": "lexical"}).json()
        assert got["mode"] == "dense"


def test_http_modes_and_options(client) -> None:
    ready = client.get("/readyz").json()
    assert ready["search_modes"]["lexical_index"] is True and ready["search_modes"]["default"] == "hybrid"
    body = client.post("/search", json={"query": "red mug", "k": 5}).json()
    assert body["mode"] == "hybrid" and "fallback" not in body
    body = client.post("/search", json={"query": "red mug", "k": 5, "mode": "hybrid", "fusion": "weighted",
                                        "weights": {"dense": 0.3, "lexical": 0.7}}).json()
    assert body["mode"] == "hybrid" and len(body["results"]) == 5
    got = client.get("/search", params={"q": "red mug", "k": 5, "mode": "lexical"}).json()
    assert got["mode"] == "lexical"
    got = client.get("/search", params={"q": "red mug", "fusion": "rrf", "rrf_k": 10, "dense_weight": 2}).json()
    assert got["mode"] == "hybrid"
    for bad in ({"mode": "fuzzy"}, {"weights": {"dense": -1}}, {"weights": {"dense": 0, "lexical": 0}},
                {"fusion": "max"}, {"weights": {"dense": 1e308}}, {"rrf_k": -1}):
        r = client.post("/search", json={"query": "red mug", **bad})
        assert r.status_code == 422, (bad, r.json())
    assert 'search_stage_seconds_count{stage="lexical"}' in client.get("/metrics").text


def _clone_with_lexical(artifacts: Path, version: str, new: str, docs: list[str]) -> None:
    """A copy of `version` named `new` whose lexical index is built from `docs` (checksums redone)."""
    src, dst = artifacts / "versions" / version, artifacts / "versions" / new
    shutil.copytree(src, dst)
    for p in dst.glob("lexical.*"):
        p.unlink()
    LexicalIndex.build(docs).save(dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest["version"] = new
    manifest["files"] = {str(p.relative_to(dst)): sha256_file(p) for p in sorted(dst.rglob("*"))
                         if p.is_file() and p.name != MANIFEST}
    (dst / MANIFEST).write_text(json.dumps(manifest))


def test_rollback_reloads_the_matching_lexical_index(artifacts_copy: Path, tiny_build) -> None:
    store = ArtifactStore(artifacts_copy)
    old = tiny_build.version
    n = tiny_build.manifest["n_items"]
    docs = ["zqxjv marker listing"] + ["plain"] * (n - 1)
    _clone_with_lexical(artifacts_copy, old, "v-new", docs)
    engine = Engine(Settings(artifacts=artifacts_copy, reload_poll_s=0, warmup_queries=1))
    req = SearchRequest("zqxjv", 3, 0, Filter(), "lexical")
    store.publish("v-new")
    engine.load()
    hits = engine.search_batch([req]).hits[0]
    assert engine.current.version == "v-new" and [h.id for h in hits] == engine.current.store.ids()[:1]
    store.publish(old)  # roll back: the old version's own lexical index comes back with it
    engine.load()
    assert engine.current.version == old and engine.search_batch([req]).hits[0] == []
    # a version whose lexical files fail their checksums is refused; the served one stays
    (artifacts_copy / "versions" / "v-new" / "lexical.vocab.json").write_text("{}")
    with pytest.raises(Exception, match="checksum"):
        engine.load("v-new")
    assert engine.current.version == old


def test_update_index_carries_the_lexical_documents(artifacts_copy: Path, tiny_build, tiny_sample: Path) -> None:
    from index.lexical import read_documents
    from service.build.update import update_index

    rows = [json.loads(x) for x in (tiny_sample / "catalog.jsonl").read_text().splitlines()]
    new = {**rows[0], "id": "NEW-LEX", "title": "Teapot", "description": "glazed in qwzzle blue",
           "images": [str(tiny_sample / p) for p in rows[0].get("images", [])]}
    delta = artifacts_copy.parent / "delta.jsonl"
    delta.write_text(json.dumps(new) + "\n" + json.dumps({"id": rows[1]["id"], "deleted": True}) + "\n")
    parent_docs = read_documents(tiny_build.path)
    assert parent_docs is not None and len(parent_docs) == tiny_build.manifest["n_items"]
    result = update_index(artifacts_copy, delta, device="cpu", images_root=tiny_sample)
    docs = read_documents(result.path)
    ids = [r.id for r in version_records(result.path)]
    old_ids = [r.id for r in version_records(tiny_build.path)]
    by_old = dict(zip(old_ids, parent_docs, strict=True))
    assert all(docs[i] == by_old[lid] for i, lid in enumerate(ids) if lid != "NEW-LEX")  # carried unchanged
    assert rows[1]["id"] not in ids and "qwzzle" in docs[ids.index("NEW-LEX")]
    engine = Engine(Settings(artifacts=artifacts_copy, reload_poll_s=0, warmup_queries=1))
    engine.load()
    hits = engine.search_batch([SearchRequest("qwzzle", 3, 0, Filter(), "lexical")]).hits[0]
    assert [h.id for h in hits] == ["NEW-LEX"]


def version_records(folder: Path) -> list:
    from index.store.listings import ListingStore

    return list(ListingStore(folder / "listings.sqlite").records())


def test_build_reports_the_three_modes(tiny_build) -> None:
    metrics = tiny_build.manifest["metrics"]
    modes = metrics["modes"]
    assert set(modes) == {"dense", "lexical", "hybrid", "fusion"}
    assert modes["dense"]["ndcg@10"] == pytest.approx(metrics["ndcg@10"], abs=1e-9)  # the same dense ranking
    assert modes["fusion"]["method"] == FusionSpec().method
    assert tiny_build.manifest["lexical"]["n_docs"] == tiny_build.manifest["n_items"]
