"""Issue 18 item 1: explain. The per-view vectors the build writes (view_vectors.npy, slot_weights.npy)
against the fused vectors, and each explained hit against naive numpy references on the stored
files: the fused score is the hit's score, the dense cosine q · vectors[row], per-view cosines
q · view_vectors[row, s]; a version without view vectors names what it lacks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import wait_ready

from index.store.artifacts import MANIFEST, ArtifactStore
from index.store.listings import ListingStore
from index.store.manifest import Manifest
from service.api.app import create_app
from service.build.pipeline import VIEW_VECTORS_AUTO_MAX, BuildOptions
from service.serving.settings import Settings

FP16 = 2e-3  # fp16 storage of unit vectors: a few 1e-4 per component, summed over d


def stored(tiny_build) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    folder = tiny_build.path
    return (np.load(folder / "vectors.npy").astype(np.float32), np.load(folder / "view_vectors.npy").astype(np.float32),
            np.load(folder / "slot_weights.npy").astype(np.float32))


def rows_of(tiny_build) -> dict[str, int]:
    return {i: r for r, i in enumerate(ListingStore(tiny_build.path / "listings.sqlite").ids())}


def query_vector(client: TestClient, text: str) -> np.ndarray:
    return client.app.state.svc.engine.current.encoder.encode([text])[0]  # type: ignore[attr-defined]


def test_build_writes_view_vectors_that_fuse_to_the_stored_vectors(tiny_build) -> None:
    vectors, views, weights = stored(tiny_build)  # (n, d), (n, S, d), (n, S)
    m = tiny_build.manifest
    n, d = vectors.shape
    s = views.shape[1]
    assert views.shape == (n, s, d) and weights.shape == (n, s)
    meta = m["view_vectors"]
    assert meta["slots"][:4] == ["title", "image", "description", "tags"] and len(meta["slots"]) == s
    assert meta["bytes_per_listing"] == s * d * 2 + s * 2
    assert {"view_vectors.npy", "slot_weights.npy"} <= set(m["files"])  # checksummed like the rest
    fused = np.einsum("ns,nsd->nd", weights, views)  # (n, d) the weighted sum of the views
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    np.testing.assert_allclose(fused, vectors, atol=FP16)
    assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-2)


def test_view_vectors_option() -> None:
    opts = BuildOptions(catalog=Path("c"), artifacts=Path("a"))
    assert opts.wants_view_vectors(VIEW_VECTORS_AUTO_MAX) and not opts.wants_view_vectors(VIEW_VECTORS_AUTO_MAX + 1)
    assert BuildOptions(catalog=Path("c"), artifacts=Path("a"), view_vectors="on").wants_view_vectors(10**9)
    assert not BuildOptions(catalog=Path("c"), artifacts=Path("a"), view_vectors="off").wants_view_vectors(1)
    with pytest.raises(ValueError, match="view_vectors"):
        BuildOptions(catalog=Path("c"), artifacts=Path("a"), view_vectors="maybe")


def check_hits(client: TestClient, tiny_build, query: str, hits: list[dict]) -> None:
    vectors, views, weights = stored(tiny_build)
    rows = rows_of(tiny_build)
    slots = tiny_build.manifest["view_vectors"]["slots"]
    q = query_vector(client, query)
    for h in hits:
        e, row = h["explain"], rows[h["id"]]
        assert e["fused"] == pytest.approx(h["score"], abs=1e-6)
        assert e["dense_cosine"] == pytest.approx(float(vectors[row] @ q), abs=FP16)
        present = np.linalg.norm(views[row], axis=1) > 0
        ref = views[row] @ q  # (S,) naive reference
        assert [v["view"] for v in e["views"]] == [slots[s] for s in np.nonzero(present)[0]]
        for v, s in zip(e["views"], np.nonzero(present)[0], strict=True):
            assert v["cosine"] == pytest.approx(float(ref[s]), abs=FP16)
            assert v["weight"] == pytest.approx(float(weights[row, s]), abs=1e-3)
        assert e["missing"] == []


def test_explain_weighted_hybrid(client, tiny_build) -> None:
    query = "handmade ceramic mug"
    body = client.post("/search", json={"query": query, "k": 8, "mode": "hybrid", "fusion": "weighted",
                                        "explain": True}).json()
    hits = body["results"]
    assert hits and all("explain" in h for h in hits)
    check_hits(client, tiny_build, query, hits)
    lexical = [h["explain"] for h in hits if h["explain"]["lexical_rank"] is not None]
    assert lexical and all(0.0 <= e["lexical_normalized"] <= 1.0 and e["lexical_bm25"] > 0 for e in lexical)
    spec = client.app.state.svc.engine.fusion  # type: ignore[attr-defined]
    for h in hits:  # fused = w_dense * dense_norm + w_lexical * lexical_norm, dense_norm in 0..1
        e = h["explain"]
        if not e["identifier_boost"]:
            assert spec.lexical_weight * e["lexical_normalized"] - 1e-6 <= e["fused"]
            assert e["fused"] <= spec.lexical_weight * e["lexical_normalized"] + spec.dense_weight + 1e-6
    # the hit list without explain is the same list, without explain keys
    plain = client.post("/search", json={"query": query, "k": 8, "mode": "hybrid", "fusion": "weighted"}).json()
    assert [h["id"] for h in plain["results"]] == [h["id"] for h in hits]
    assert all("explain" not in h for h in plain["results"])


def test_explain_rrf_ranks_and_dense(client, tiny_build) -> None:
    query = "wool scarf"
    hits = client.get("/search", params={"q": query, "k": 6, "mode": "hybrid", "fusion": "rrf",
                                         "explain": "1"}).json()["results"]
    check_hits(client, tiny_build, query, hits)
    assert all(h["explain"]["lexical_normalized"] is None for h in hits)
    dense = client.post("/search", json={"query": query, "k": 50, "mode": "dense"}).json()["results"]
    lexical = client.post("/search", json={"query": query, "k": 50, "mode": "lexical"}).json()["results"]
    for h in hits:  # each rank is the hit's place in that mode's own ranking
        e = h["explain"]
        d = [x["id"] for x in dense]
        assert e["dense_rank"] == (d.index(h["id"]) + 1 if h["id"] in d else None)
        lx = [x["id"] for x in lexical]
        if e["lexical_rank"] is not None:
            assert lx.index(h["id"]) + 1 == e["lexical_rank"]
    d_hits = client.post("/search", json={"query": query, "k": 5, "mode": "dense", "explain": True}).json()["results"]
    check_hits(client, tiny_build, query, d_hits)
    assert [h["explain"]["dense_rank"] for h in d_hits] == [1, 2, 3, 4, 5]
    for h in d_hits:
        assert h["explain"]["fused"] == pytest.approx(h["explain"]["dense_cosine"], abs=1e-5)
    l_hits = client.post("/search", json={"query": query, "k": 3, "mode": "lexical", "explain": True}).json()["results"]
    assert [h["explain"]["lexical_rank"] for h in l_hits] == list(range(1, len(l_hits) + 1))
    assert all(h["explain"]["fused"] == pytest.approx(h["explain"]["lexical_bm25"], rel=1e-5) for h in l_hits)


def test_explain_with_fields_and_pages(client, tiny_build) -> None:
    query = "gift for a coffee lover"
    body = {"query": query, "k": 4, "offset": 4, "mode": "hybrid", "fields": ["price"], "explain": True}
    hits = client.post("/search", json=body).json()["results"]
    assert hits and all("price" in h for h in hits)
    check_hits(client, tiny_build, query, hits)


def test_version_without_view_vectors_names_what_it_lacks(tiny_build, artifacts_copy: Path) -> None:
    store = ArtifactStore(artifacts_copy)
    folder = store.version_dir(tiny_build.version)
    manifest = store.manifest(tiny_build.version)
    with store.stage("old") as staged:
        for p in folder.iterdir():
            if p.name not in (MANIFEST, "view_vectors.npy", "slot_weights.npy"):
                (staged.path / p.name).write_bytes(p.read_bytes())
        store.commit(staged, Manifest.from_dict({k: v for k, v in manifest.items() if k != "view_vectors"}))
    settings = Settings(artifacts=artifacts_copy, version="old", reload_poll_s=0)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        hits = c.post("/search", json={"query": "ceramic mug", "k": 3, "explain": True}).json()["results"]
    assert hits
    for h in hits:
        assert h["explain"]["views"] is None and h["explain"]["missing"] == ["views"]
        assert h["explain"]["fused"] == pytest.approx(h["score"], abs=1e-6)
    assert json.loads(json.dumps(hits))  # plain JSON, nulls included


def test_explain_like_id_uses_the_stored_vector(client, tiny_build) -> None:
    vectors, _, _ = stored(tiny_build)
    rows = rows_of(tiny_build)
    lid = list(rows)[3]
    hits = client.post("/search", json={"like_id": lid, "k": 5, "explain": True}).json()["results"]
    assert len(hits) == 5
    for rank, h in enumerate(hits, start=1):
        e = h["explain"]
        assert e["fused"] == pytest.approx(h["score"], abs=1e-6)
        assert e["dense_cosine"] == pytest.approx(float(vectors[rows[h["id"]]] @ vectors[rows[lid]]), abs=FP16)
        assert e["dense_rank"] == rank  # the listing itself is not counted


def test_explain_in_a_batch(client, tiny_build) -> None:
    body = {"searches": [{"query": "ceramic mug", "k": 3, "explain": True}, {"query": "ceramic mug", "k": 3}]}
    one, two = client.post("/search/batch", json=body).json()["responses"]
    assert one["status"] == two["status"] == 200
    assert [h["id"] for h in one["results"]] == [h["id"] for h in two["results"]]
    check_hits(client, tiny_build, "ceramic mug", one["results"])
    assert all("explain" not in h for h in two["results"])
