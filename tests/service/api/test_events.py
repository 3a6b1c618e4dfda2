"""POST /events: validation (4xx with the service's error body), off -> 404, metrics per action,
the events log (whole bodies, rotation, a full queue refused with 429), the OpenAPI schema. No
model is needed: the app runs over an empty artifact folder."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.serving.querylog import EventLog, read_log
from service.serving.settings import Settings

EV = {"query": "red mug", "item_id": "L1", "action": "click", "request_id": "r1"}


def app_client(tmp_path: Path, **kw) -> TestClient:
    settings = Settings(artifacts=tmp_path / "empty", reload_poll_s=0, denylist_poll_s=0, max_query_chars=32, **kw)
    return TestClient(create_app(settings))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with app_client(tmp_path, events_log=tmp_path / "log" / "events.jsonl", events_max_batch=3) as c:
        yield c


def lines(path: Path, n: int) -> list[dict]:
    end = time.monotonic() + 5
    while time.monotonic() < end and not (path.exists() and len(path.read_text().splitlines()) >= n):
        time.sleep(0.02)
    return list(read_log([path]))


def test_one_event_or_a_list_is_written_and_counted(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/events", json=EV)
    assert r.status_code == 202 and r.json() == {"accepted": 1}
    r = client.post("/events", json=[{**EV, "action": "add_to_cart", "query": "  red   mug "},
                                     {**EV, "action": "purchase", "session_id": "s9"}])
    assert r.status_code == 202 and r.json() == {"accepted": 2}
    rows = lines(tmp_path / "log" / "events.jsonl", 3)
    assert [r["action"] for r in rows] == ["click", "add_to_cart", "purchase"]
    assert rows[1]["query"] == "red mug" and rows[2]["session_id"] == "s9" and "session_id" not in rows[0]
    assert {"ts", "request_id", "query", "item_id", "action"} <= set(rows[0])
    text = client.get("/metrics").text
    for action, n in (("click", 1), ("add_to_cart", 1), ("purchase", 1)):
        assert f'events_recorded_total{{action="{action}"}} {n}.0' in text


@pytest.mark.parametrize(("body", "status", "message"), [
    ({**EV, "action": "like"}, 422, "event.action: Input should be 'click', 'add_to_cart' or 'purchase'"),
    ({**EV, "query": " \u200b "}, 422, "event.query: must not be empty (it has no visible character)"),
    ([EV, {**EV, "query": "x" * 33}], 422, "events.1.query: 33 characters, the limit is 32"),
    ({**EV, "item_id": "L" * 129}, 422, "event.item_id: String should have at most 128 characters"),
    ({**EV, "item_id": "  "}, 422, "event.item_id: must not be empty"),
    ({**EV, "request_id": ""}, 422, "event.request_id: String should have at least 1 character"),
    ({k: v for k, v in EV.items() if k != "request_id"}, 422, "event.request_id: Field required"),
    ({**EV, "clicks": 3}, 422, "event.clicks: Extra inputs are not permitted"),
    ([], 422, "events: List should have at least 1 item after validation, not 0"),
    ([EV] * 4, 413, "events: 4 in one body, the limit is 3 (events_max_batch); send them in several requests"),
])
def test_bad_bodies_get_4xx_with_the_error_body(client: TestClient, tmp_path: Path, body, status: int,
                                                message: str) -> None:
    r = client.post("/events", json=body)
    assert r.status_code == status, r.text
    assert r.json() == {"error": "PayloadTooLarge" if status == 413 else "InvalidRequest", "message": message}
    assert "events_recorded_total{" not in client.get("/metrics").text


def test_off_by_default_answers_404_saying_how_to_turn_it_on(tmp_path: Path) -> None:
    with app_client(tmp_path) as c:
        r = c.post("/events", json=EV)
    assert r.status_code == 404
    assert r.json()["error"] == "NotFound" and "SERVICE_EVENTS_LOG" in r.json()["message"]


def test_a_full_queue_refuses_the_body_with_429(client: TestClient, monkeypatch) -> None:
    monkeypatch.setattr(client.app.state.svc.events_log, "record", lambda rows: False)
    r = client.post("/events", json=[EV, EV])
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["error"] == "Overloaded"
    text = client.get("/metrics").text
    assert "events_refused_total 1.0" in text and "events_recorded_total{" not in text


def test_the_events_log_writes_bodies_whole_rotates_and_never_blocks(tmp_path: Path, monkeypatch) -> None:
    log = EventLog(tmp_path / "e.jsonl", max_bytes=2048, backups=1)
    for i in range(40):
        assert log.record([("red mug", f"L{i}", "click", f"r{i}", None), ("red mug", f"L{i}", "purchase", f"r{i}", None)])
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl", "e.jsonl.1"]
    rows = list(read_log([tmp_path / "e.jsonl.1", tmp_path / "e.jsonl"]))
    assert all(p.stat().st_size <= 2048 for p in tmp_path.iterdir())
    assert rows[-1]["item_id"] == "L39" and len(rows) % 2 == 0  # a body's lines stay in one file
    dropped: list[int] = []
    slow = EventLog(tmp_path / "s.jsonl", max_queue=2, on_drop=lambda: dropped.append(1))
    line = slow._line
    monkeypatch.setattr(slow, "_line", lambda item: (time.sleep(0.05), line(item))[1])
    t0 = time.perf_counter()
    results = [slow.record([("q", "L1", "click", f"r{i}", None)]) for i in range(20)]
    assert time.perf_counter() - t0 < 0.5
    slow.close()
    assert False in results and len(dropped) == results.count(False) == slow.dropped
    assert slow.written == results.count(True)


def test_openapi_documents_the_route(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/events"]["post"]
    assert {"202", "404", "413", "422", "429"} <= set(op["responses"])
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"][0] == {"$ref": "#/components/schemas/EventBody"} and body["oneOf"][1]["type"] == "array"
    schema = client.get("/openapi.json").json()["components"]["schemas"]["EventBody"]
    assert schema["properties"]["action"]["enum"] == ["click", "add_to_cart", "purchase"]
    assert json.loads(client.get("/readyz").text)["status"] == "not ready"  # /events needs no model
