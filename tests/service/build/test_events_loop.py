"""The loop search teams run, through the real entry points: serve a version, search, POST /events
for a listing that was not ranked first, `service build-index --interactions EVENTS_LOG`, hot-reload
the new version, and the listing ranks higher for its query than before."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import wait_ready

from service.api.app import create_app
from service.cli import main
from service.serving.settings import Settings

TOKEN = "s3cret"
TARGET_REQUESTS = 25  # searches for the target query that ended in click + cart + purchase


def rank_of(client: TestClient, query: str, item: str) -> int:
    """1-based rank of `item` in the dense top 50 of `query` (51: not in it)."""
    ids = [h["id"] for h in client.post("/search", json={"query": query, "k": 50, "mode": "dense"}).json()["results"]]
    return ids.index(item) + 1 if item in ids else 51


def post_all(client: TestClient, events: list[dict], batch: int) -> None:
    for i in range(0, len(events), batch):
        r = client.post("/events", json=events[i:i + batch])
        assert r.status_code == 202, r.text
        assert r.json() == {"accepted": len(events[i:i + batch])}


def wait_lines(path: Path, n: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {n} lines after {timeout}s")


@pytest.mark.slow
def test_posted_events_rank_the_clicked_listing_higher_in_the_next_build(artifacts_copy: Path, tiny_sample: Path,
                                                                      tmp_path: Path, capsys) -> None:
    events_log = tmp_path / "log" / "events.jsonl"
    settings = Settings(artifacts=artifacts_copy, reload_poll_s=0, admin_token=TOKEN, events_log=events_log,
                        events_max_batch=50)
    # the shoppers' history the tiny build trained on, replayed as clicks (one request each), so the
    # new version differs from the old by the target's events only
    history = [json.loads(line) for line in (tiny_sample / "interactions.jsonl").read_text().splitlines()]
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        old_version = client.get("/readyz").json()["index_version"]
        query = history[0]["query"]
        first = client.post("/search", json={"query": query, "k": 50, "mode": "dense"}).json()["results"]
        target = first[9]["id"]  # ranked 10th: not first, and not what the old model prefers
        old_rank = rank_of(client, query, target)
        assert old_rank == 10

        events = [{"query": r["query"], "item_id": r["item_id"], "action": "click", "request_id": f"h{n}-{j}"}
                  for n, r in enumerate(history) for j in range(int(r["weight"]))]
        for _ in range(TARGET_REQUESTS):  # real searches: the storefront echoes their X-Request-ID
            rid = client.post("/search", json={"query": query, "k": 10}).headers["x-request-id"]
            events += [{"query": query, "item_id": target, "action": a, "request_id": rid}
                       for a in ("click", "add_to_cart", "purchase")]
        duplicates = events[-3:]  # a storefront retry of the last request's events
        bot = [{"query": query, "item_id": h["id"], "action": "click", "request_id": "crawler-1"}
               for h in first[:15]]  # clicks every result: filtered, or it would lift them all
        post_all(client, events + duplicates + bot, settings.events_max_batch)
        wait_lines(events_log, len(events) + len(duplicates) + len(bot))
        assert client.get("/events").status_code == 405
        metrics = client.get("/metrics").text
        assert f'events_recorded_total{{action="purchase"}} {TARGET_REQUESTS + 1}.0' in metrics

        capsys.readouterr()
        code = main(["build-index", "--catalog", str(tiny_sample / "catalog.jsonl"), "--artifacts", str(artifacts_copy),
                     "--interactions", str(events_log), "--judgments", str(tiny_sample / "judgments.jsonl"),
                     "--epochs", "2", "--batch-size", "64", "--device", "cpu", "--no-progress",
                     "--image-cache", str(artifacts_copy.parent / "image-cache")])
        out, err = capsys.readouterr()
        assert code == 0, err
        built = json.loads(out)
        assert built["published"]
        report = json.loads((Path(built["path"]) / "report.json").read_text())["inputs"]["interactions"]
        assert report["format"] == "events"
        assert report["events"]["filtered"] == {"duplicate": 3, "bot_request_events": 0, "bot_request_items": 15,
                                                "bot_session_events": 0}
        assert report["events"]["kept"] == len(events)
        assert "dropped 15 from requests clicking more than 10 listings" in err

        r = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        assert r.json()["index_version"] == built["version"] != old_version
        new_rank = rank_of(client, query, target)
    print(f"{query!r} {target}: rank {old_rank} -> {new_rank}")
    assert new_rank <= 3, (old_rank, new_rank)
