"""End to end: tiny generated catalog -> build-index (1-2 epochs on CPU) -> app under TestClient.

Retrieval is checked for real: title queries find their listing, the trained model is at least as
good as the untrained one on the catalog's judgments, and a shuffled-ids negative control is far
worse. Every 4xx path of the API is exercised."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from index.store.artifacts import ArtifactStore


def test_build_publishes_a_complete_version(tiny_build) -> None:
    m = tiny_build.manifest
    assert tiny_build.published
    for key in ("version", "created", "objective", "model_digest", "n_items", "dim", "index_key", "files", "metrics"):
        assert key in m, key
    assert set(m["files"]) >= {"model.safetensors", "tokenizer.json", "index.faiss", "vectors.npy", "listings.sqlite"}
    assert {"recall@10", "recall@100", "ndcg@10", "mrr@10"} <= set(m["metrics"])
    assert "title_answerable" in m["metrics"] and "auxiliary_only" in m["metrics"]
    assert m["modality_gap"]["before"] and m["modality_gap"]["after"]
    store = ArtifactStore(tiny_build.path.parent.parent)
    assert store.current_version() == tiny_build.version
    store.verify(tiny_build.version)


def test_ready_health_and_metrics(client) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["items"] > 0
    assert ready["placement"] == {"encoder": "cpu", "index": "faiss-cpu"}
    client.post("/search", json={"query": "mug"})
    text = client.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/search",status="200"}' in text
    assert "http_request_duration_seconds_bucket" in text
    assert 'search_stage_seconds_count{stage="encode"}' in text
    assert "index_items " in text and "service_build_info{" in text and "search_batch_size_bucket" in text


def test_title_queries_find_their_listing(client, tiny_sample: Path) -> None:
    rows = [json.loads(line) for line in (tiny_sample / "catalog.jsonl").read_text().splitlines()]
    titles: dict[str, list[str]] = {}
    for r in rows:
        titles.setdefault(r["title"].lower(), []).append(r["id"])
    specific = [(t, ids) for t, ids in titles.items() if len(ids) == 1][:25]
    found = 0
    for title, ids in specific:
        body = client.post("/search", json={"query": title, "k": 10}).json()
        found += ids[0] in [h["id"] for h in body["results"]]
    assert found / len(specific) >= 0.8, (found, len(specific))


@pytest.mark.slow
def test_trained_beats_untrained_and_shuffled_control(tiny_build, tiny_builder, tiny_sample: Path, tmp_path: Path) -> None:
    from service.build.evaluate import evaluate_version

    untrained = tiny_builder(tiny_sample, tmp_path / "zero", epochs=0, publish=False)
    trained = tiny_build.manifest["metrics"]
    zero = untrained.manifest["metrics"]
    assert trained["ndcg@10"] >= zero["ndcg@10"] and trained["recall@10"] >= zero["recall@10"], (trained, zero)
    # `service eval` on an unpublished version gives the build's own numbers
    again = evaluate_version(tmp_path / "zero", untrained.version, tiny_sample / "judgments.jsonl", device="cpu")
    assert again["ndcg@10"] == pytest.approx(zero["ndcg@10"], abs=1e-6)
    # negative control: the same index with listing ids shuffled must score far lower
    from index.build import load_index
    from index.search import FaissCpuSearcher
    from index.store.listings import ListingStore
    from model.data.interactions import load_judgments
    from model.runtime.query_encoder import QueryEncoder
    from service.build.evaluation import evaluate

    folder = tiny_build.path
    ids = ListingStore(folder / "listings.sqlite").ids()
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    searcher = FaissCpuSearcher(load_index(str(folder / "index.faiss")), np.load(folder / "vectors.npy"))
    enc = QueryEncoder(folder / "model.safetensors", folder / "tokenizer.json")
    control = evaluate(searcher, shuffled, enc.encode, load_judgments(tiny_sample / "judgments.jsonl"))
    assert control["ndcg@10"] < 0.5 * trained["ndcg@10"], (control["ndcg@10"], trained["ndcg@10"])


def test_search_response_shape_get_and_filters(client) -> None:
    body = client.post("/search", json={"query": "red mug", "k": 5}).json()
    assert set(body) == {"results", "model_version", "index_version", "took_ms", "mode"}
    assert len(body["results"]) == 5
    hit = body["results"][0]
    assert set(hit) <= {"id", "score", "title", "image"} and isinstance(hit["score"], float)
    images = [h["image"] for h in body["results"] if "image" in h]
    assert images and all(i.startswith("https://cdn.example/img/") for i in images)
    got = client.get("/search", params={"q": "red mug", "k": 5}).json()
    assert [h["id"] for h in got["results"]] == [h["id"] for h in body["results"]]
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    # category filter: every hit is in the category; pagination continues the same ranking
    flt = client.post("/search", json={"query": "gift", "k": 10, "filters": {"category": ["mug"]}}).json()
    assert flt["results"]
    first = client.post("/search", json={"query": "gift", "k": 4, "filters": {"category": "mug"}}).json()
    page2 = client.post("/search", json={"query": "gift", "k": 4, "offset": 4, "filters": {"category": "mug"}}).json()
    assert [h["id"] for h in first["results"] + page2["results"]] == [h["id"] for h in flt["results"]][:8]
    cheap = client.get("/search", params={"q": "gift", "price_max": 15}).json()
    assert cheap["results"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"query": ""}, "query: must not be empty"),
        ({"query": "   "}, "query: must not be empty"),
        ({"query": "\u0000\u0000"}, "query: must not be empty"),
        ({"query": "\u200b"}, "query: must not be empty"),
        ({"query": " \u200b\u200d\ufeff\u2060 \t"}, "query: must not be empty"),
        ({"query": "x" * 65}, "query: 65 characters, the limit is 64"),
        ({"query": "mug", "k": 0}, "k: 0 is outside 1..50"),
        ({"query": "mug", "k": 51}, "k: 51 is outside 1..50"),
        ({"query": "mug", "k": "10"}, "k: Input should be a valid integer"),
        ({"query": "mug", "offset": -1}, "offset: -1 is outside"),
        ({"query": "mug", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"query": "mug", "filters": {"colour": "red"}}, "filters.colour: Extra inputs are not permitted"),
        ({"query": "mug", "filters": {"price": {"min": 5, "max": 1}}}, "min 5 is greater than max 1"),
        ({"query": "mug", "filters": {"price": {"min": -1}}}, "greater than or equal to 0"),
        ({"k": 3}, "query: Field required"),
        ({"query": 5}, "query: Input should be a valid string"),
    ],
)
def test_bad_requests_get_422_with_a_message(client, body: dict, fragment: str) -> None:
    r = client.post("/search", json=body)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["message"], r.json()


def test_other_4xx_paths(client) -> None:
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["message"]
    r = client.get("/search", params={"q": "mug", "colour": "red"})
    assert r.status_code == 422 and "unknown query parameter(s): colour" in r.json()["message"]
    r = client.get("/search", params={"q": "mug", "k": 1000})
    assert r.status_code == 422
    r = client.post("/search", json={"query": "x" * 40_000})
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.get("/nope")
    assert r.status_code == 404
    assert "x-request-id" in r.headers
    for resp in (client.post("/search", json={"query": ""}), client.get("/search", params={"q": ""})):
        assert "Traceback" not in resp.text and "/work" not in resp.text and "/tmp" not in resp.text


def test_get_search_query_string(client) -> None:
    """GET /search validates its query string in one call (parse_search_query): the errors name the
    parameter as FastAPI's own parsing did, repeated categories are all kept, and the OpenAPI
    schema still documents every parameter."""
    for params, fragment in (({"k": "5"}, "query.q: Field required"),
                             ({"q": "mug", "k": "ten"}, "query.k: Input should be a valid integer"),
                             ({"q": "mug", "mode": "fuzzy"}, "query.mode: Input should be"),
                             ({"q": "mug", "rrf_k": "-1"}, "query.rrf_k: Input should be greater than or equal to 0"),
                             ({"q": "mug", "dense_weight": "nan"}, "query.dense_weight: Input should be a finite number")):
        r = client.get("/search", params=params)
        assert r.status_code == 422 and fragment in r.json()["message"], (params, r.json())
    one = client.get("/search", params=[("q", "gift"), ("k", "20"), ("category", "mug")]).json()["results"]
    both = client.get("/search", params=[("q", "gift"), ("k", "20"), ("category", "mug"), ("category", "scarf")])
    assert both.status_code == 200
    assert {h["id"] for h in one} < {h["id"] for h in both.json()["results"]}  # any of the two categories
    last = client.get("/search", params=[("q", "gift"), ("k", "2"), ("k", "3")]).json()["results"]
    assert len(last) == 3  # a repeated scalar keeps its last value
    documented = {p["name"]: p for p in client.get("/openapi.json").json()["paths"]["/search"]["get"]["parameters"]}
    assert set(documented) == {"q", "k", "offset", "category", "price_min", "price_max", "mode", "fusion", "rrf_k",
                               "dense_weight", "lexical_weight", "fields", "explain"}
    assert documented["q"]["required"] and documented["category"]["schema"]["anyOf"][0]["type"] == "array"


def test_admin_reload_with_token(client, tiny_build) -> None:
    r = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"}, json={"version": tiny_build.version})
    assert r.status_code == 200 and r.json()["index_version"] == tiny_build.version
    bad = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"}, json={"version": "nope"})
    assert bad.status_code == 409 and "still serving" in bad.json()["message"]
    assert client.get("/readyz").json()["last_reload_error"]
    assert client.post("/search", json={"query": "mug"}).status_code == 200


def test_every_error_has_one_shape(client) -> None:
    """413, 404, 405, a body that is not JSON, a domain error: all `{"error", "message"}`, CamelCase codes."""
    cases = [
        (client.post("/search", json={"query": "x" * 40_000}), 413, "PayloadTooLarge", "max_body_bytes"),
        (client.get("/nope"), 404, "NotFound", "no route /nope"),
        (client.delete("/search"), 405, "MethodNotAllowed", "DELETE is not allowed on /search"),
        (client.post("/search", content=b'{"query": "mug",}', headers={"content-type": "application/json"}),
         422, "InvalidRequest", "body: not valid JSON at character"),
        (client.post("/search", json={"query": "mug", "k": 0}), 422, "InvalidRequest", "k: 0 is outside"),
        (client.post("/admin/reload"), 401, "Unauthorized", ""),
    ]
    for r, status, code, fragment in cases:
        body = r.json()
        assert r.status_code == status, (code, r.text)
        assert set(body) == {"error", "message"}, body
        assert body["error"] == code and re.fullmatch(r"(?:[A-Z][a-z]+)+", body["error"]), body
        assert fragment in body["message"] and body["message"], body
        assert "x-request-id" in r.headers
    assert "JSON decode error" not in cases[3][0].json()["message"].split(":")[0]


def test_filters_mean_the_same_on_get_and_post(client) -> None:
    """`[]` is no constraint for categories and attributes alike; GET takes several categories
    (repeated or comma-separated) and attribute filters (`attr.KEY=v1,v2`), as POST does."""
    def ids(r) -> list[str]:
        assert r.status_code == 200, r.text
        return [h["id"] for h in r.json()["results"]]

    everything = ids(client.post("/search", json={"query": "gift", "k": 20}))
    assert ids(client.post("/search", json={"query": "gift", "k": 20, "filters": {"category": []}})) == everything
    assert ids(client.post("/search", json={"query": "gift", "k": 20,
                                            "filters": {"attributes": {"pattern": []}}})) == everything
    two = ids(client.post("/search", json={"query": "gift", "k": 20, "filters": {"category": ["vase", "poster"]}}))
    assert two
    assert ids(client.get("/search", params={"q": "gift", "k": 20, "category": "vase,poster"})) == two
    assert ids(client.get("/search", params=[("q", "gift"), ("k", "20"), ("category", "vase"),
                                             ("category", "poster")])) == two
    floral = ids(client.post("/search", json={"query": "gift", "k": 20,
                                              "filters": {"attributes": {"pattern": ["floral", "striped"]}}}))
    assert floral and len(floral) < len(everything)
    assert ids(client.get("/search", params={"q": "gift", "k": 20, "attr.pattern": "floral,striped"})) == floral
    r = client.get("/search", params={"q": "gift", "attr.": "x"})
    assert r.status_code == 422 and "unknown query parameter(s): attr." in r.json()["message"]


def test_eval_headline_is_the_served_mode(tiny_build, tiny_sample: Path, capsys, monkeypatch) -> None:
    from service.cli import main

    argv = ["eval", "--artifacts", str(tiny_build.path.parent.parent), "--judgments",
            str(tiny_sample / "judgments.jsonl"), "--device", "cpu"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["served_mode"] == "hybrid" and out["served"] == out["modes"]["hybrid"]  # the default mode
    monkeypatch.setenv("SERVICE_SEARCH_MODE", "dense")
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["served_mode"] == "dense" and out["served"]["ndcg@10"] == out["ndcg@10"]


def test_get_filter_values_keep_a_known_name_with_a_comma_whole() -> None:
    from index.filters import FilterColumns
    from service.api.search import split_values

    cols = FilterColumns.from_rows(["Tables, desks", "mug"], [1.0, 2.0], [{"fabric": "cotton, linen"}, {}])
    assert split_values(["Tables, desks", "mug,vase"], cols.category_vocab.__contains__) == \
        ["Tables, desks", "mug", "vase"]
    held = lambda v: ("fabric", v) in cols.attribute_rows  # noqa: E731
    assert split_values(["Cotton,  Linen"], held) == ["Cotton,  Linen"]  # compared as filters compare
    assert split_values(["red,blue"], held) == ["red", "blue"]
    assert split_values(["a,,b, "]) == ["a", "b"]
