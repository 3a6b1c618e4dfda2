"""Issue 18: GET /listings/{id}, more like this (GET /listings/{id}/similar, like_id), fields=, and
the listing store's photos (new `images` column, old versions read tolerantly)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import wait_ready

from index.store.listings import ListingRecord, ListingStore, write_listings
from service.api.app import create_app
from service.serving.settings import Settings


def catalog(tiny_sample: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (tiny_sample / "catalog.jsonl").read_text().splitlines() if line.strip()]
    return {r["id"]: r for r in rows}


def version_dir(tiny_build) -> Path:
    return tiny_build.path


def dense_neighbours(tiny_build, listing_id: str) -> list[str]:
    """The naive reference: exact inner products of the listing's stored vector with every other one."""
    folder = version_dir(tiny_build)
    vectors = np.load(folder / "vectors.npy").astype(np.float32)  # (n, d)
    ids = ListingStore(folder / "listings.sqlite").ids()
    row = ids.index(listing_id)
    scores = vectors @ vectors[row]  # (n,)
    order = [int(r) for r in np.argsort(-scores, kind="stable") if r != row]
    return [ids[r] for r in order]


def test_listing_record_has_every_photo(client, tiny_sample: Path) -> None:
    cat = catalog(tiny_sample)
    many = next(i for i, r in cat.items() if len(r.get("images", [])) > 1)
    r = client.get(f"/listings/{many}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == many and body["title"] == cat[many]["title"]
    assert body["images"] == [f"https://cdn.example/img/{p}" for p in cat[many]["images"]]
    assert body["image"] == body["images"][0]
    assert body["category"] == cat[many]["category"] and body["price"] == pytest.approx(cat[many]["price"])
    assert body["attributes"] == cat[many].get("attributes", {})
    assert "x-request-id" in r.headers
    missing = client.get("/listings/NOPE", headers={"X-Request-ID": "rid-404"})
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound"
    assert "NOPE" in missing.json()["message"] and missing.headers["x-request-id"] == "rid-404"


def test_similar_is_the_stored_vectors_neighbours_without_itself(client, tiny_build) -> None:
    lid = ListingStore(version_dir(tiny_build) / "listings.sqlite").ids()[5]
    r = client.get(f"/listings/{lid}/similar", params={"k": 8})
    assert r.status_code == 200, r.text
    got = [h["id"] for h in r.json()["results"]]
    assert lid not in got and len(got) == 8
    assert got == dense_neighbours(tiny_build, lid)[:8]
    assert r.json()["mode"] == "dense" and set(r.json()["results"][0]) == {"id", "score", "title", "image"}
    # pages continue the same ranking; POST /search like_id is the same search
    p1 = client.get(f"/listings/{lid}/similar", params={"k": 4}).json()["results"]
    p2 = client.get(f"/listings/{lid}/similar", params={"k": 4, "offset": 4}).json()["results"]
    assert [h["id"] for h in p1 + p2] == got
    post = client.post("/search", json={"like_id": lid, "k": 8}).json()
    assert [h["id"] for h in post["results"]] == got and post["mode"] == "dense"


def test_similar_with_filters_and_fields(client, tiny_build, tiny_sample: Path) -> None:
    cat = catalog(tiny_sample)
    lid = ListingStore(version_dir(tiny_build) / "listings.sqlite").ids()[0]
    category = cat[lid]["category"]
    r = client.get(f"/listings/{lid}/similar", params={"k": 5, "category": category, "fields": "category,price"})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert hits and all(h["category"] == category for h in hits)
    assert all(h["price"] == pytest.approx(cat[h["id"]]["price"]) for h in hits)
    want = [i for i in dense_neighbours(tiny_build, lid) if cat[i]["category"] == category][:5]
    assert [h["id"] for h in hits] == want
    cheap = client.get(f"/listings/{lid}/similar", params={"price_max": 20, "fields": "price"}).json()["results"]
    assert all(h["price"] <= 20 for h in cheap)


@pytest.mark.parametrize(
    ("call", "status", "fragment"),
    [
        (("GET", "/listings/NOPE/similar", None), 404, "no listing 'NOPE'"),
        (("POST", "/search", {"like_id": "NOPE"}), 404, "like_id: no listing 'NOPE'"),
        (("POST", "/search", {"like_id": "L000001", "mode": "lexical"}), 422, "needs a query text"),
        (("POST", "/search", {"like_id": "L000001", "query": "mug", "mode": "dense"}), 422, "ignore one of them"),
        (("POST", "/search", {"like_id": ""}), 422, "like_id"),
        (("GET", "/listings/L000001/similar?k=0", None), 422, "k: 0 is outside 1..50"),
        (("GET", "/listings/L000001/similar?q=mug", None), 422, "unknown query parameter(s): q"),
        (("GET", "/search?q=mug&fields=price,colour", None), 422, "fields: unknown field 'colour'"),
        (("POST", "/search", {"query": "mug", "fields": ["nope"]}), 422, "fields: unknown field 'nope'"),
        (("POST", "/search", {"k": 3}), 422, "query: Field required"),
    ],
)
def test_bad_more_like_this_and_fields(client, call, status: int, fragment: str) -> None:
    method, url, body = call
    r = client.request(method, url, json=body)
    assert r.status_code == status, r.text
    assert fragment in r.json()["message"] and set(r.json()) == {"error", "message"}


def test_like_id_with_a_query_is_hybrid_and_still_excludes_itself(client) -> None:
    r = client.post("/search", json={"like_id": "L000003", "query": "gift", "k": 10})
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "hybrid" and "L000003" not in [h["id"] for h in r.json()["results"]]


def test_fields_add_only_what_is_asked(client, tiny_sample: Path) -> None:
    cat = catalog(tiny_sample)
    plain = client.get("/search", params={"q": "gift", "k": 5}).json()["results"]
    assert all(set(h) <= {"id", "score", "title", "image"} for h in plain)  # the default stays small
    rich = client.get("/search", params={"q": "gift", "k": 5, "fields": "price,category,images,attributes"})
    assert rich.status_code == 200, rich.text
    for h, p in zip(rich.json()["results"], plain, strict=True):
        assert h["id"] == p["id"] and h["score"] == p["score"]  # same search, more of each hit
        row = cat[h["id"]]
        assert h["category"] == row["category"] and h["price"] == pytest.approx(row["price"])
        assert h["images"] == [f"https://cdn.example/img/{x}" for x in row["images"]]
        assert h.get("attributes", {}) == row.get("attributes", {})
    with_attr = next(i for i, r in cat.items() if r.get("attributes"))
    key, value = next(iter(cat[with_attr]["attributes"].items()))
    post = client.post("/search", json={"like_id": with_attr, "k": 50, "fields": [f"attr.{key}", "id"]}).json()
    for h in post["results"]:
        assert set(h) <= {"id", "score", "title", "image", "attributes"}
        assert h["attributes"] == ({key: cat[h["id"]]["attributes"][key]}
                                   if key in cat[h["id"]].get("attributes", {}) else {})


def test_denied_listing_is_404_and_never_similar(artifacts_copy: Path) -> None:
    settings = Settings(artifacts=artifacts_copy, reload_poll_s=0, denylist_poll_s=0, admin_token="t", cache_size=100)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        first = c.get("/listings/L000002/similar", params={"k": 3}).json()["results"][0]["id"]
        r = c.post("/admin/deny", json={"ids": [first, "L000002"]}, headers={"Authorization": "Bearer t"})
        assert r.status_code == 200, r.text
        assert c.get("/listings/L000002").status_code == 404
        assert c.get("/listings/L000002/similar").status_code == 404
        assert c.post("/search", json={"like_id": "L000002"}).status_code == 404
        others = c.get("/listings/L000007/similar", params={"k": 50}).json()["results"]
        assert first not in [h["id"] for h in others] and "L000007" not in [h["id"] for h in others]


def test_openapi_documents_the_new_routes(client) -> None:
    spec = client.get("/openapi.json").json()
    similar = spec["paths"]["/listings/{listing_id}/similar"]["get"]
    names = {p["name"] for p in similar["parameters"]}
    assert {"listing_id", "k", "offset", "category", "fields"} <= names
    assert "404" in similar["responses"]
    assert "like_id" in spec["components"]["schemas"]["SearchBody"]["properties"]
    assert "/listings/{listing_id}" in spec["paths"]


def test_listing_store_reads_an_old_version_without_images(tmp_path: Path) -> None:
    """A version written before the images column: its primary photo is its only photo."""
    path = tmp_path / "listings.sqlite"
    con = sqlite3.connect(path)
    con.executescript("CREATE TABLE listings (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, title TEXT NOT NULL,"
                      " image TEXT, category TEXT, price REAL, attributes TEXT NOT NULL);")
    con.execute("INSERT INTO listings VALUES (0, 'A', 'a mug', 'a.jpg', 'mug', 3.5, '{\"color\": \"red\"}')")
    con.execute("INSERT INTO listings VALUES (1, 'B', 'a vase', NULL, NULL, NULL, '{}')")
    con.commit()
    con.close()
    store = ListingStore(path)
    assert not store.has_images
    recs = store.by_ids(["A", "B", "C"])
    assert recs["A"].photos() == ["a.jpg"] and recs["B"].photos() == [] and "C" not in recs
    assert [r.id for r in store.records()] == ["A", "B"] and store.image_refs() == ["a.jpg"]

    new = tmp_path / "new.sqlite"
    write_listings(new, [ListingRecord(0, "A", "a mug", "a.jpg", "mug", 3.5, {}, ("a.jpg", "b.jpg")),
                         ListingRecord(1, "B", "a vase", "v.jpg", None, None, {})])
    store = ListingStore(new)
    assert store.has_images
    assert store.by_ids(["A"])["A"].images == ("a.jpg", "b.jpg")
    assert store.by_ids(["B"])["B"].photos() == ["v.jpg"]  # no images given: the primary
    assert sorted(set(store.image_refs())) == ["a.jpg", "b.jpg", "v.jpg"]
