"""Issue 18 item 4: POST /search/batch answers each search in order with its own status, through
one micro-batch."""

from __future__ import annotations

from fastapi.testclient import TestClient
from helpers import wait_ready

from service.api.app import create_app
from service.serving.settings import Settings


def test_batch_answers_in_order_each_with_its_status(client) -> None:
    searches = [
        {"query": "red mug", "k": 3},
        {"query": "", "k": 3},  # 422 for this one only
        {"query": "gift", "k": 2, "offset": 2, "fields": ["price"]},
        {"like_id": "NOPE"},  # 404
        {"query": "vase", "colour": "red"},  # unknown field: 422
        {"like_id": "L000004", "k": 4},
        7,  # not an object
    ]
    r = client.post("/search/batch", json={"searches": searches}, headers={"X-Request-ID": "batch-1"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "batch-1"
    items = r.json()["responses"]
    assert [i["status"] for i in items] == [200, 422, 200, 404, 422, 200, 422]
    for i in (1, 3, 4, 6):
        assert set(items[i]) == {"status", "error", "message"}
    assert items[1]["error"] == "InvalidRequest" and "query: must not be empty" in items[1]["message"]
    assert items[3]["error"] == "NotFound" and "like_id" in items[3]["message"]
    assert "colour: Extra inputs are not permitted" in items[4]["message"]
    # each 200 is what POST /search answers for the same body
    for i in (0, 2, 5):
        alone = client.post("/search", json=searches[i]).json()
        assert items[i]["results"] == alone["results"] and items[i]["index_version"] == alone["index_version"]
    assert all("price" in h for h in items[2]["results"])
    metrics = client.get("/metrics").text
    assert 'search_batch_queries_total{status="422"}' in metrics
    assert 'http_requests_total{method="POST",route="/search/batch",status="200"}' in metrics


def test_batch_limits_and_bad_bodies(client) -> None:
    r = client.post("/search/batch", json={"searches": [{"query": "mug"}] * 33})  # max_batch_queries 32
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge" and "max_batch_queries" in r.json()["message"]
    r = client.post("/search/batch", json={"searches": []})
    assert r.status_code == 422 and r.json()["error"] == "InvalidRequest"
    r = client.post("/search/batch", json={"queries": [{"query": "mug"}]})
    assert r.status_code == 422 and "searches: Field required" in r.json()["message"]
    spec = client.get("/openapi.json").json()
    body = spec["components"]["schemas"]["SearchBatchBody"]["properties"]["searches"]
    items = body["items"]  # each item documented as a POST /search body
    assert items.get("$ref", "").endswith("/SearchBody") or items.get("title") == "SearchBody"


def test_batch_shares_one_encoder_call(tiny_build) -> None:
    settings = Settings(artifacts=tiny_build.path.parent.parent, reload_poll_s=0, cache_size=0, max_wait_us=50_000,
                        max_batch_queries=4)
    app = create_app(settings)
    with TestClient(app) as c:
        wait_ready(c)
        batcher = app.state.svc.batcher
        calls: list[int] = []
        encoder = app.state.svc.engine.current.encoder
        real = encoder.encode_tokens
        encoder.encode_tokens = lambda ids, mask: calls.append(len(ids)) or real(ids, mask)
        before = batcher.batches
        try:
            r = c.post("/search/batch", json={"searches": [{"query": q, "mode": "dense"}
                                                           for q in ("mug", "vase", "scarf", "lamp")]})
        finally:
            encoder.encode_tokens = real
        assert r.status_code == 200 and [i["status"] for i in r.json()["responses"]] == [200] * 4
        assert batcher.batches - before == 1 and calls == [4]
        assert c.post("/search/batch", json={"searches": [{"query": "mug"}] * 5}).status_code == 413
