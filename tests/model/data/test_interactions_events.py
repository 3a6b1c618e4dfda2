"""`load_interactions` on the events log of POST /events: the format is detected by its fields,
actions are weighted, duplicates and bots are filtered and counted; the old format is unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest

from model.data.catalog import CatalogError
from model.data.interactions import ACTION_WEIGHTS, EventRules, describe_events, load_interactions


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ev(query: str, item: str, action: str, rid: str, **kw) -> dict:
    return {"ts": "2026-01-01T00:00:00.000+00:00", "request_id": rid, "query": query, "item_id": item,
            "action": action, **kw}


def pairs(rows) -> dict[tuple[str, str], float]:
    return {(it.query, it.item_id): it.weight for it in rows}


def test_old_format_still_loads_without_an_events_report(tmp_path: Path) -> None:
    p = write(tmp_path / "i.jsonl", [{"query": "red mug", "item_id": "L1", "weight": 2}, {"query": "vase", "item_id": 7}])
    rows, rep = load_interactions(p, {"L1", "7"})
    assert pairs(rows) == {("red mug", "L1"): 2.0, ("vase", "7"): 1.0}
    assert "format" not in rep.to_dict() and rep.events is None


def test_events_are_weighted_by_action_and_summed_per_pair(tmp_path: Path) -> None:
    p = write(tmp_path / "e.jsonl", [
        ev("red  mug", "L1", "click", "r1"), ev("red mug", "L1", "add_to_cart", "r1"),
        ev("red mug", "L1", "purchase", "r1"), ev("red mug", "L1", "click", "r2"),
        ev("red mug", "L2", "click", "r2"), ev("vase", "L3", "purchase", "r3", session_id="s1"),
        ev("vase", "SOLD", "click", "r3"),
    ])
    rows, rep = load_interactions(p, {"L1", "L2", "L3"})
    assert ACTION_WEIGHTS == {"click": 1.0, "add_to_cart": 3.0, "purchase": 5.0}
    assert pairs(rows) == {("red mug", "L1"): 1 + 3 + 5 + 1, ("red mug", "L2"): 1.0, ("vase", "L3"): 5.0}
    d = rep.to_dict()
    assert d["format"] == "events" and d["rows"] == 7 and d["loaded"] == 3 and d["unknown_items"] == 1
    assert d["events"]["by_action"] == {"add_to_cart": 1, "click": 4, "purchase": 2}
    assert d["events"]["filtered"] == {"duplicate": 0, "bot_request_events": 0, "bot_request_items": 0,
                                       "bot_session_events": 0}
    assert d["events"]["weights"] == ACTION_WEIGHTS and d["events"]["rules"]["max_items_per_request"] == 10


def test_duplicates_and_bots_are_filtered_and_counted(tmp_path: Path) -> None:
    rules = EventRules(max_events_per_request=6, max_items_per_request=3, max_events_per_session=8)
    rows = [ev("mug", "L1", "click", "ok"), ev("mug", "L1", "click", "ok"), ev("mug", "L1", "click", "ok")]  # 2 dups
    rows += [ev("mug", f"L{i % 2}", a, "busy") for i, a in enumerate(["click", "add_to_cart", "purchase"] * 3)]
    rows += [ev("mug", f"L{i}", "click", "scraper") for i in range(4)]  # 4 distinct listings > 3
    rows += [ev("mug", "L1", "click", f"s-{i}", session_id="replay") for i in range(9)]  # 9 events > 8
    rows += [ev("mug", "L2", "purchase", f"fine-{i}", session_id="person") for i in range(3)]
    kept, rep = load_interactions(write(tmp_path / "e.jsonl", rows), rules=rules)
    # "busy": 9 rows, 3 of them repeat (request, item, action) -> 6 unique: at the limit, kept
    f = rep.events["filtered"]
    assert f == {"duplicate": 5, "bot_request_events": 0, "bot_request_items": 4, "bot_session_events": 9}
    assert pairs(kept) == {("mug", "L1"): 1 + 3 + 1 + 5, ("mug", "L0"): 1 + 5 + 3, ("mug", "L2"): 15.0}
    assert rep.events["kept"] == 1 + 6 + 3
    lines = describe_events(rep.to_dict())
    assert lines[0].startswith("interactions: events log") and "3 weighted (query, listing) pairs" in lines[0]
    assert "interactions: dropped 5 duplicates (same request_id, item_id, action)" in lines
    assert "interactions: dropped 4 from requests clicking more than 3 listings" in lines
    assert "interactions: dropped 9 from sessions with more than 8 events" in lines
    # one request with too many events in all is a bot too
    flood = [ev("mug", "L1", a, "flood") for a in ACTION_WEIGHTS]
    _, rep = load_interactions(write(tmp_path / "f.jsonl", flood), rules=EventRules(max_events_per_request=2))
    assert rep.events["filtered"]["bot_request_events"] == 3 and rep.loaded == 0


@pytest.mark.parametrize(("row", "field", "why"), [
    (ev("mug", "L1", "like", "r1"), "action", "expected one of click, add_to_cart, purchase, got 'like'"),
    (ev("   ", "L1", "click", "r1"), "query", "is empty"),
    ({k: v for k, v in ev("mug", "L1", "click", "r1").items() if k != "request_id"}, "request_id", "is missing"),
    (ev("mug", "L1", "click", "x" * 300), "request_id", "is 300 characters long (limit 256)"),
    (ev("mug", "L1", "click", "r1", session_id=""), "session_id", "expected a non-empty string, got ''"),
])
def test_bad_event_rows_name_line_and_field(tmp_path: Path, row: dict, field: str, why: str) -> None:
    p = write(tmp_path / "e.jsonl", [ev("mug", "L1", "click", "r0"), row])
    with pytest.raises(CatalogError) as e:
        load_interactions(p)
    assert (e.value.line, e.value.field, e.value.reason) == (2, field, why)
    rows, rep = load_interactions(p, skip_bad_rows=True)
    assert len(rows) == 1 and len(rep.rejected) == 1 and f":2: {field}" in rep.rejected[0]


def test_the_api_takes_exactly_the_weighted_actions() -> None:
    from service.api.schemas import Action

    assert set(get_args(Action)) == set(ACTION_WEIGHTS)
