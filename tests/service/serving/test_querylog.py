"""The query log (off the hot path, redaction, rotation, conversion to interactions) and request
ids in logs (context variable + filter + JSON lines), unit and through the app."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import wait_ready

from index.filters import Filter
from service.api.app import create_app
from service.serving.logctx import JsonFormatter, RequestIdFilter, configure_logging, request_id_var
from service.serving.querylog import QueryLog, filters_json, main, read_log, to_interactions
from service.serving.settings import Settings


def _record(log: QueryLog, i: int, query: str = "red mug") -> None:
    log.record(f"r{i}", query, 10, 0, Filter.build(["mug"], {"color": "red"}, None, 30.0), [f"L{i}", "L9"],
               "ft-abc", "v1", 3.25, False)


def test_lines_have_every_field_and_redaction_hashes(tmp_path: Path) -> None:
    plain, hidden = QueryLog(tmp_path / "q.jsonl"), QueryLog(tmp_path / "r.jsonl", redact=True)
    for log in (plain, hidden):
        _record(log, 1, "Red Mug")
        log.close()
    row = json.loads((tmp_path / "q.jsonl").read_text())
    assert row["query"] == "Red Mug" and row["request_id"] == "r1" and row["results"] == ["L1", "L9"]
    assert row["filters"] == {"category": ["mug"], "attributes": {"color": ["red"]}, "price": {"min": None, "max": 30.0}}
    assert {"ts", "k", "offset", "model_version", "index_version", "latency_ms", "cached"} <= set(row)
    red = json.loads((tmp_path / "r.jsonl").read_text())
    assert "query" not in red and red["query_sha256"] == hashlib.sha256(b"Red Mug").hexdigest()
    assert filters_json(Filter()) is None and filters_json(None) is None


def test_rotation_by_size_keeps_backups(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "q.jsonl", max_bytes=2048, backups=2)
    for i in range(60):
        _record(log, i)
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["q.jsonl", "q.jsonl.1", "q.jsonl.2"]
    assert all(p.stat().st_size <= 2048 for p in tmp_path.iterdir())
    rows = list(read_log([tmp_path / "q.jsonl.2", tmp_path / "q.jsonl.1", tmp_path / "q.jsonl"]))
    ids = [int(r["request_id"][1:]) for r in rows]
    assert ids == sorted(ids) and ids[-1] == 59 and log.written == 60  # oldest rotated out, order kept


def test_full_queue_drops_instead_of_blocking(tmp_path: Path, monkeypatch) -> None:
    log = QueryLog(tmp_path / "q.jsonl", max_queue=5)
    slow = log._line
    monkeypatch.setattr(log, "_line", lambda item: (time.sleep(0.05), slow(item))[1])
    t0 = time.perf_counter()
    for i in range(50):
        _record(log, i)
    assert time.perf_counter() - t0 < 0.5  # record() never waits for the disk
    log.close()
    assert log.dropped > 0 and log.written + log.dropped == 50


def test_to_interactions_joins_clicks(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "q.jsonl")
    _record(log, 1, "red mug")
    _record(log, 2, "red mug")
    _record(log, 3, "blue vase")
    log.close()
    clicks = tmp_path / "clicks.jsonl"
    clicks.write_text("\n".join(json.dumps(c) for c in [
        {"request_id": "r1", "item_id": "L1"}, {"request_id": "r2", "item_id": "L9"},
        {"request_id": "r1", "item_id": "L9"}, {"request_id": "r3", "item_id": "L42"},  # not shown: ignored
        {"request_id": "nope", "item_id": "L1"}]) + "\n")
    rows = to_interactions(read_log([tmp_path / "q.jsonl"]), read_log([clicks]))
    assert rows == [{"query": "red mug", "item_id": "L1", "weight": 1.0}, {"query": "red mug", "item_id": "L9", "weight": 2.0}]
    out = tmp_path / "next" / "interactions.jsonl"
    assert main(["to-interactions", "--log", str(tmp_path / "q.jsonl"), "--clicks", str(clicks), "--out", str(out)]) == 0
    assert [json.loads(x) for x in out.read_text().splitlines()] == rows
    redacted = QueryLog(tmp_path / "r.jsonl", redact=True)
    _record(redacted, 1)
    redacted.close()
    with pytest.raises(ValueError, match="redacted"):
        to_interactions(read_log([tmp_path / "r.jsonl"]), [])


def test_request_id_filter_and_json_formatter() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    lg = logging.getLogger("test.requestid")
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    try:
        token = request_id_var.set("abc123")
        lg.info("hello %s", "world")
        lg.info(json.dumps({"route": "/search", "status": 200}))
        request_id_var.reset(token)
        lg.info("outside")
    finally:
        lg.removeHandler(handler)
    a, b, c = (json.loads(x) for x in stream.getvalue().splitlines())
    assert a["request_id"] == "abc123" and a["message"] == "hello world" and a["level"] == "info"
    assert b["request_id"] == "abc123" and b["route"] == "/search" and "message" not in b  # merged
    assert c["request_id"] == "-"
    with pytest.raises(ValueError, match="log_format"):
        configure_logging("info", "xml")


def test_app_writes_query_log_and_logs_carry_request_ids(tiny_build, tmp_path: Path) -> None:
    settings = Settings(artifacts=tiny_build.path.parent.parent, reload_poll_s=0, cache_size=0,
                        query_log=tmp_path / "log" / "q-{pid}.jsonl", query_log_redact=False)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logging.getLogger("service").addHandler(handler)  # access log and batch worker lines
    logging.getLogger("service").setLevel(logging.INFO)
    try:
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            r = client.post("/search", json={"query": "red mug", "k": 3}, headers={"X-Request-ID": "req-42"})
            assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
            r2 = client.get("/search", params={"q": "blue vase"})
            generated = r2.headers["x-request-id"]
            assert len(generated) == 32
        # the app has shut down: the log is closed and flushed
    finally:
        logging.getLogger("service").removeHandler(handler)
    (path,) = (tmp_path / "log").iterdir()
    assert path.name.startswith("q-") and path.name != "q-{pid}.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["request_id"] for r in rows] == ["req-42", generated]
    assert rows[0]["query"] == "red mug" and rows[0]["k"] == 3 and len(rows[0]["results"]) == 3
    assert rows[0]["index_version"] == tiny_build.version and rows[0]["cached"] is False
    assert rows[0]["mode"] == r.json()["mode"]  # the mode that answered (hybrid, or dense on a fallback)
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    access = [x for x in lines if x["logger"] == "service.access" and x.get("route") == "/search"]
    assert [x["request_id"] for x in access] == ["req-42", generated] and access[0]["status"] == 200
