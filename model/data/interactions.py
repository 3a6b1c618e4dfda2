"""Training signal (`interactions.jsonl` or the service's events log) and evaluation labels (`judgments.jsonl`).

interactions: {"query": str, "item_id": str, "weight"?: number > 0}
negatives:    {"query": str, "item_id": str}      (listings judged wrong for the query: `load_negatives`)
events:       {"query": str, "item_id": str, "action": click|add_to_cart|purchase, "request_id": str,
               "session_id"?: str, "ts"?: str}      (what POST /events writes; docs/DATA.md)
judgments:    {"query": str, "item_id": str, "relevance": number, "title_answerable"?: bool}

`load_interactions` tells the two training formats apart by the first row's fields (an `action`
field: events). Events become interactions: duplicates (same request_id, item_id and action) are
dropped, requests and sessions that look automated are dropped whole (`EventRules`), and each
(query, item) pair weighs the sum of its events' `ACTION_WEIGHTS`; the report counts each cut.

A judgment counts as relevant when its relevance is above the lowest grade in the file; its gain is
relevance - lowest grade (so the lowest grade marks judged non-relevant listings).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.data.catalog import CatalogError, read_jsonl

MAX_QUERY_CHARS = 1_000
MAX_ID_CHARS = 256  # request_id / session_id in an events log (the service writes at most 128)

# What one shopper event says about a (query, listing) pair. A purchase is the strongest evidence
# the listing answered the query; a cart is intent; a click can be curiosity or a misleading photo.
# Relative sizes (1 : 3 : 5) follow the usual practice of weighting conversions a few clicks' worth
# without letting one purchase drown a popular pair's clicks.
ACTION_WEIGHTS: dict[str, float] = {"click": 1.0, "add_to_cart": 3.0, "purchase": 5.0}


@dataclass(frozen=True)
class EventRules:
    """When a request or a session is a bot (all its events are dropped), not a shopper."""

    # One results page: a shopper clicks a few listings, carts one or two, buys one. 20 events for
    # one search is several times what a person does; a crawler following every link does more.
    max_events_per_request: int = 20
    # Distinct listings clicked for the query of one request: opening more than 10 of one page's
    # results is a scraper (or a link checker), and its clicks say nothing about relevance.
    max_items_per_request: int = 10
    # A session (when the storefront sends session_id) of a long shopping visit is tens of searches
    # and their events; hundreds is automation replaying searches.
    max_events_per_session: int = 300


@dataclass(frozen=True)
class Interaction:
    query: str
    item_id: str
    weight: float = 1.0


@dataclass
class SignalReport:
    file: str
    rows: int = 0
    loaded: int = 0
    rejected: list[str] = field(default_factory=list)
    unknown_items: int = 0
    # events logs only: events by action, what was filtered and why, the weights and rules applied
    events: dict[str, Any] | None = None

    def to_dict(self, max_examples: int = 20) -> dict[str, Any]:
        out = {
            "file": self.file, "rows": self.rows, "loaded": self.loaded,
            "rejected": len(self.rejected), "rejected_examples": self.rejected[:max_examples],
            "unknown_items": self.unknown_items,
        }
        if self.events is not None:
            out["format"] = "events"
            out["events"] = self.events
        return out


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | CatalogError]]:
    if not path.is_file():
        raise CatalogError(str(path), None, "file", "no such file")
    return read_jsonl(path)


def _text(row: dict[str, Any], key: str, path: Path, line: int) -> str:
    value = row.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and key == "item_id":
        value = str(value)
    if not isinstance(value, str):
        reason = "is missing" if value is None else f"expected a string, got {type(value).__name__}"
        raise CatalogError(str(path), line, key, reason)
    value = " ".join(value.split())
    if not value:
        raise CatalogError(str(path), line, key, "is empty")
    if len(value) > MAX_QUERY_CHARS:
        raise CatalogError(str(path), line, key, f"is {len(value)} characters long (limit {MAX_QUERY_CHARS})")
    return value


def _number(row: dict[str, Any], key: str, path: Path, line: int, default: float | None) -> float:
    value = row.get(key, default)
    if value is None:
        raise CatalogError(str(path), line, key, "is missing")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CatalogError(str(path), line, key, f"expected a finite number, got {value!r}")
    return float(value)


def _is_events(first: dict[str, Any] | CatalogError | None) -> bool:
    return isinstance(first, dict) and "action" in first


def load_interactions(
    path: str | Path, known_ids: set[str] | None = None, *, skip_bad_rows: bool = False,
    rules: EventRules = EventRules(),
) -> tuple[list[Interaction], SignalReport]:
    """Interactions whose item is in the catalog; others are counted (a sold listing is normal).
    An events log (first row has `action`) is filtered and weighted first (`load_events`)."""
    p = Path(path)
    rows = _rows(p)
    head = list(itertools.islice(rows, 1))
    rows = itertools.chain(head, rows)
    if head and _is_events(head[0][1]):
        return load_events(p, rows, known_ids, skip_bad_rows=skip_bad_rows, rules=rules)
    return _pairs(p, rows, known_ids, skip_bad_rows=skip_bad_rows, weighted=True)


def load_negatives(
    path: str | Path, known_ids: set[str] | None = None, *, skip_bad_rows: bool = False,
) -> tuple[list[Interaction], SignalReport]:
    """Judged negatives: {"query", "item_id"} rows, a listing shown for the query and judged wrong
    (a low relevance grade, a result shoppers skipped). Each joins its query's softmax as a hard
    negative in training (model/train/trainer.py). Same row rules as interactions; a `weight` is
    ignored, and an events log is refused (it records what shoppers chose, not what they rejected)."""
    p = Path(path)
    rows = _rows(p)
    head = list(itertools.islice(rows, 1))
    if head and _is_events(head[0][1]):
        raise CatalogError(str(p), head[0][0], "action", "an events log records what shoppers chose; negatives are "
                           "{query, item_id} rows of listings judged wrong for the query")
    return _pairs(p, itertools.chain(head, rows), known_ids, skip_bad_rows=skip_bad_rows, weighted=False)


def _pairs(p: Path, rows: Iterable[tuple[int, dict[str, Any] | CatalogError]], known_ids: set[str] | None, *,
           skip_bad_rows: bool, weighted: bool) -> tuple[list[Interaction], SignalReport]:
    report = SignalReport(str(p))
    out: list[Interaction] = []
    for line, row in rows:
        report.rows += 1
        try:
            if isinstance(row, CatalogError):
                raise row
            query, item = _text(row, "query", p, line), _text(row, "item_id", p, line)
            weight = _number(row, "weight", p, line, 1.0) if weighted else 1.0
            if weight <= 0:
                raise CatalogError(str(p), line, "weight", f"must be > 0, got {weight}")
        except CatalogError as err:
            if not skip_bad_rows:
                raise
            report.rejected.append(str(err))
            continue
        if known_ids is not None and item not in known_ids:
            report.unknown_items += 1
            continue
        out.append(Interaction(query, item, weight))
    report.loaded = len(out)
    return out, report


@dataclass(frozen=True)
class Event:
    query: str
    item_id: str
    action: str
    request_id: str
    session_id: str | None


def _event(row: dict[str, Any], p: Path, line: int) -> Event:
    query, item = _text(row, "query", p, line), _text(row, "item_id", p, line)
    action = row.get("action")
    if action not in ACTION_WEIGHTS:
        raise CatalogError(str(p), line, "action", f"expected one of {', '.join(ACTION_WEIGHTS)}, got {action!r}")
    ids = []
    for key in ("request_id", "session_id"):
        value = row.get(key)
        if value is None and key == "session_id":
            ids.append(None)
            continue
        if not isinstance(value, str) or not value.strip():
            raise CatalogError(str(p), line, key, "is missing" if value is None else f"expected a non-empty string, got {value!r}")
        if len(value) > MAX_ID_CHARS:
            raise CatalogError(str(p), line, key, f"is {len(value)} characters long (limit {MAX_ID_CHARS})")
        ids.append(value)
    return Event(query, item, str(action), ids[0], ids[1])


def filter_events(events: Iterable[Event], rules: EventRules = EventRules()) -> tuple[list[Event], dict[str, int]]:
    """Shopper events without duplicates and bots -> (kept, events dropped by reason). A request
    or session that breaks a rule loses all its events (its first broken rule names the reason)."""
    seen: set[tuple[str, str, str]] = set()
    unique: list[Event] = []
    dropped = {"duplicate": 0, "bot_request_events": 0, "bot_request_items": 0, "bot_session_events": 0}
    for ev in events:
        key = (ev.request_id, ev.item_id, ev.action)
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        unique.append(ev)
    per_request = Counter(ev.request_id for ev in unique)
    clicked: dict[str, set[str]] = {}
    for ev in unique:
        if ev.action == "click":
            clicked.setdefault(ev.request_id, set()).add(ev.item_id)
    per_session = Counter(ev.session_id for ev in unique if ev.session_id is not None)
    kept = []
    for ev in unique:
        if per_request[ev.request_id] > rules.max_events_per_request:
            dropped["bot_request_events"] += 1
        elif len(clicked.get(ev.request_id, ())) > rules.max_items_per_request:
            dropped["bot_request_items"] += 1
        elif ev.session_id is not None and per_session[ev.session_id] > rules.max_events_per_session:
            dropped["bot_session_events"] += 1
        else:
            kept.append(ev)
    return kept, dropped


def load_events(
    p: Path, rows: Iterable[tuple[int, dict[str, Any] | CatalogError]], known_ids: set[str] | None = None, *,
    skip_bad_rows: bool = False, rules: EventRules = EventRules(),
) -> tuple[list[Interaction], SignalReport]:
    """An events log (POST /events) as weighted interactions, one per (query, item) pair."""
    report = SignalReport(str(p))
    events: list[Event] = []
    for line, row in rows:
        report.rows += 1
        try:
            if isinstance(row, CatalogError):
                raise row
            events.append(_event(row, p, line))
        except CatalogError as err:
            if not skip_bad_rows:
                raise
            report.rejected.append(str(err))
    kept, dropped = filter_events(events, rules)
    weights: dict[tuple[str, str], float] = {}
    for ev in kept:
        if known_ids is not None and ev.item_id not in known_ids:
            report.unknown_items += 1
            continue
        key = (ev.query, ev.item_id)
        weights[key] = weights.get(key, 0.0) + ACTION_WEIGHTS[ev.action]
    out = [Interaction(q, i, w) for (q, i), w in weights.items()]
    report.loaded = len(out)
    report.events = {
        "events": len(events), "by_action": dict(sorted(Counter(ev.action for ev in events).items())),
        "kept": len(kept), "filtered": dropped, "pairs": len(out),
        "weights": dict(ACTION_WEIGHTS), "rules": asdict(rules),
    }
    return out, report


def describe_events(report: dict[str, Any]) -> list[str]:
    """An events log's build report as console lines: what became training pairs, what was cut, why."""
    ev = report.get("events") if report.get("format") == "events" else None
    if not ev:
        return []
    f = ev.get("filtered", {})
    lines = [f"interactions: events log {report.get('file')}: {ev['events']:,} events "
             f"({', '.join(f'{n:,} {a}' for a, n in ev.get('by_action', {}).items()) or 'none'}) -> "
             f"{ev['kept']:,} kept -> {ev['pairs']:,} weighted (query, listing) pairs"]
    why = {"duplicate": "duplicates (same request_id, item_id, action)",
           "bot_request_events": f"from requests with more than {ev['rules']['max_events_per_request']} events",
           "bot_request_items": f"from requests clicking more than {ev['rules']['max_items_per_request']} listings",
           "bot_session_events": f"from sessions with more than {ev['rules']['max_events_per_session']} events"}
    lines += [f"interactions: dropped {n:,} {why[k]}" for k, n in f.items() if n]
    if report.get("unknown_items"):
        lines.append(f"interactions: {report['unknown_items']:,} events name listings not in the catalog (skipped)")
    return lines


@dataclass
class Judgments:
    """Graded labels grouped by query (query order = first appearance in the file)."""

    relevance: dict[str, dict[str, float]]
    title_answerable: dict[str, dict[str, bool]]
    lowest: float
    report: SignalReport
    # Relevant = relevance above the lowest grade, or >= min_relevant when set (homedepot: 2).
    min_relevant: float | None = None
    # Every grade equal (a positives-only file): every judged pair is relevant, gain 1; "above the
    # lowest grade" would leave nothing relevant and every metric NaN.
    positives_only: bool = False

    @property
    def queries(self) -> list[str]:
        return list(self.relevance)

    def relevant(self, query: str, subset: str = "all") -> dict[str, float]:
        """Relevant item ids of a query with their gains. subset: all | title | aux."""
        flags = self.title_answerable.get(query, {})
        out = {}
        for item, rel in self.relevance[query].items():
            if (rel < self.min_relevant) if self.min_relevant is not None else (rel <= self.lowest
                                                                                and not self.positives_only):
                continue
            if subset == "title" and flags.get(item) is not True:
                continue
            if subset == "aux" and flags.get(item) is not False:
                continue
            out[item] = 1.0 if self.positives_only else rel - self.lowest
        return out

    def has_split(self) -> bool:
        return any(self.title_answerable.values())


def load_judgments(
    path: str | Path,
    known_ids: set[str] | None = None,
    *,
    skip_bad_rows: bool = False,
    min_relevant: float | None = None,
) -> Judgments:
    p = Path(path)
    report = SignalReport(str(p))
    relevance: dict[str, dict[str, float]] = defaultdict(dict)
    flags: dict[str, dict[str, bool]] = defaultdict(dict)
    lowest, highest = math.inf, -math.inf
    for line, row in _rows(p):
        report.rows += 1
        try:
            if isinstance(row, CatalogError):
                raise row
            query, item = _text(row, "query", p, line), _text(row, "item_id", p, line)
            rel = _number(row, "relevance", p, line, None)
            ta = row.get("title_answerable")
            if ta is not None and not isinstance(ta, bool):
                raise CatalogError(str(p), line, "title_answerable", f"expected true or false, got {ta!r}")
        except CatalogError as err:
            if not skip_bad_rows:
                raise
            report.rejected.append(str(err))
            continue
        lowest, highest = min(lowest, rel), max(highest, rel)
        if known_ids is not None and item not in known_ids:
            report.unknown_items += 1
            continue
        relevance[query][item] = rel
        if ta is not None:
            flags[query][item] = ta
        report.loaded += 1
    if not relevance:
        raise CatalogError(str(p), None, "file", "no usable judgments")
    return Judgments(
        dict(relevance), dict(flags), lowest if math.isfinite(lowest) else 0.0, report, min_relevant,
        positives_only=lowest == highest,
    )
