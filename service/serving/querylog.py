"""The optional query log (one JSON line per answered search) and events log (one per shopper
event, POST /events), written off the hot path by one writer class (`JsonlWriter`).

A request only appends a tuple to a bounded in-memory queue (`record`, a few hundred ns); a writer
thread turns it into JSON, hashes the query when `redact` is on, appends it to the file and rotates
the file by size (`path` -> `path.1` -> ... -> `path.<backups>`, the oldest dropped). When the queue
is full (the disk cannot keep up) lines are dropped and counted, never blocking a request.

Line fields: ts (UTC ISO), request_id, query (or query_sha256 when redacted), k, offset, filters,
results (listing ids, in rank order), model_version, index_version, latency_ms, cached, mode.

The log records what was shown, not what was clicked, so it is not training data by itself. Joined
with the storefront's click events (`{"request_id", "item_id"}` per line) it becomes the next
`interactions.jsonl` (`{"query", "item_id", "weight"}`, weight = clicks on that pair):

    python -m service.serving.querylog to-interactions --log var/querylog.jsonl* --clicks clicks.jsonl \
        --out var/next/interactions.jsonl

A redacted log cannot be converted (the query text is gone); that is the point of redacting.
The events log needs no join: its lines carry the query, and `service build-index --interactions`
reads it directly (model/data/interactions.py: duplicates and bots filtered, actions weighted).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("service.serving.querylog")
_STOP = object()


def iso_ts(ts: float) -> str:
    """A time.time() as the logs write it: UTC ISO 8601 with milliseconds."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


def filters_json(f: Any) -> dict[str, Any] | None:
    """An `index.filters.Filter` (or a plain dict, or None) as JSON; None when it constrains nothing."""
    if f is None or isinstance(f, dict):
        return f or None
    if f.empty:
        return None
    out: dict[str, Any] = {}
    if f.categories:
        out["category"] = sorted(f.categories)
    if f.attributes:
        out["attributes"] = {k: sorted(v) for k, v in f.attributes}
    if f.price_min is not None or f.price_max is not None:
        out["price"] = {"min": f.price_min, "max": f.price_max}
    return out


class JsonlWriter:
    """A bounded queue drained by one writer thread into a size-rotated JSONL file. Subclasses say
    how a queued item becomes a line (`_line`); `put` never blocks (a full queue drops and counts,
    and calls `on_drop`, e.g. a Prometheus counter's `inc`)."""

    kind = "log"  # names the thread and the messages

    def __init__(self, path: str | Path, *, max_bytes: int = 64 << 20, backups: int = 5,
                 max_queue: int = 10_000, flush_s: float = 1.0, on_drop: Callable[[], Any] | None = None) -> None:
        if max_bytes < 1024 or backups < 0 or max_queue < 1:
            raise ValueError(f"{self.kind}: need max_bytes >= 1024, backups >= 0, max_queue >= 1; "
                             f"got {max_bytes}, {backups}, {max_queue}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.backups, self.flush_s, self.on_drop = max_bytes, backups, flush_s, on_drop
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        self.written = self.dropped = 0
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._thread = threading.Thread(target=self._writer, name=self.kind.replace(" ", "-"), daemon=True)
        self._thread.start()

    def put(self, item: Any) -> bool:
        """Hot path: enqueue (serialised later, in the writer thread); False when dropped."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
            return False
        return True

    def _line(self, item: Any) -> str:
        raise NotImplementedError

    def _rotate(self) -> None:
        self._file.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def _writer(self) -> None:
        size = self.path.stat().st_size
        while True:
            try:
                item = self._queue.get(timeout=self.flush_s)
            except queue.Empty:
                self._file.flush()
                continue
            if item is _STOP:
                break
            try:
                line = self._line(item)
                if size and size + len(line) > self.max_bytes:
                    self._rotate()
                    size = 0
                self._file.write(line)
                size += len(line.encode("utf-8"))
                self.written += 1
                if self._queue.empty():
                    self._file.flush()
            except Exception:  # noqa: BLE001 - a bad record or a full disk must not kill the writer
                log.exception("%s: could not write a line", self.kind)
        self._file.flush()
        self._file.close()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, then stop the writer (blocks up to timeout_s)."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:  # pragma: no cover - writer stuck
            log.error("%s: writer did not drain; %d lines may be lost", self.kind, self._queue.qsize())
            return
        self._thread.join(timeout_s)


class QueryLog(JsonlWriter):
    kind = "query log"

    def __init__(self, path: str | Path, *, redact: bool = False, **kw: Any) -> None:
        self.redact = redact
        super().__init__(path, **kw)

    def record(self, request_id: str, query: str, k: int, offset: int, filters: Any,
               ids: Sequence[str], model_version: str, index_version: str, latency_ms: float,
               cached: bool, mode: str | None = None) -> None:
        """Hot path: enqueue the raw fields (serialised later, in the writer thread). `mode`: the
        search mode that answered (dense / lexical / hybrid; dense on a fallback)."""
        self.put((time.time(), request_id, query, k, offset, filters, list(ids), model_version, index_version,
                  latency_ms, cached, mode))

    def _line(self, item: tuple) -> str:
        ts, rid, query, k, offset, filters, ids, mv, iv, ms, cached, mode = item
        row: dict[str, Any] = {"ts": iso_ts(ts), "request_id": rid}
        if self.redact:
            row["query_sha256"] = hashlib.sha256(query.encode("utf-8")).hexdigest()
        else:
            row["query"] = query
        row |= {"k": k, "offset": offset, "filters": filters_json(filters), "results": ids, "model_version": mv,
                "index_version": iv, "latency_ms": round(ms, 3), "cached": cached}
        if mode is not None:
            row["mode"] = mode
        return json.dumps(row, ensure_ascii=False) + "\n"


class EventLog(JsonlWriter):
    """Shoppers' events from POST /events, one line each: ts, request_id, session_id (when sent),
    query, item_id, action. A body's events are one queued item, so a body is written whole or,
    when the queue is full, refused whole (`record` -> False; the route answers 429)."""

    kind = "events log"

    def record(self, events: Sequence[tuple[str, str, str, str, str | None]]) -> bool:
        """Hot path: enqueue (query, item_id, action, request_id, session_id) tuples."""
        return self.put((time.time(), list(events)))

    def _line(self, item: tuple) -> str:
        ts, events = item
        out = []
        for query, item_id, action, rid, sid in events:
            row: dict[str, Any] = {"ts": iso_ts(ts), "request_id": rid}
            if sid is not None:
                row["session_id"] = sid
            row |= {"query": query, "item_id": item_id, "action": action}
            out.append(json.dumps(row, ensure_ascii=False) + "\n")
        return "".join(out)


# ---------------------------------------------------------------------- conversion


def read_log(paths: Iterable[str | Path]) -> Iterable[dict[str, Any]]:
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{n}: not JSON ({e.msg})") from None


def to_interactions(log_rows: Iterable[dict[str, Any]], clicks: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join clicks to logged searches by request_id -> [{"query", "item_id", "weight"}], weight =
    clicks on that (query, item) pair. Clicks on items the search did not show are ignored."""
    by_request: dict[str, dict[str, Any]] = {}
    for row in log_rows:
        if "query" not in row:
            raise ValueError(f"request {row.get('request_id')}: the log is redacted (query_sha256 only); "
                             "a redacted log cannot become interactions")
        by_request[row["request_id"]] = row
    weights: dict[tuple[str, str], float] = {}
    for c in clicks:
        row = by_request.get(str(c.get("request_id")))
        item = str(c.get("item_id"))
        if row is None or item not in row["results"]:
            continue
        key = (row["query"], item)
        weights[key] = weights.get(key, 0.0) + float(c.get("weight", 1.0))
    return [{"query": q, "item_id": i, "weight": w} for (q, i), w in sorted(weights.items())]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m service.serving.querylog", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("to-interactions", help="join a query log with click events into interactions.jsonl")
    s.add_argument("--log", nargs="+", required=True, type=Path, help="query log file(s), rotated ones included")
    s.add_argument("--clicks", required=True, type=Path, help='JSONL of {"request_id", "item_id"[, "weight"]}')
    s.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    try:
        rows = to_interactions(read_log(a.log), read_log([a.clicks]))
    except (ValueError, OSError) as e:
        print(f"querylog: error: {e}", file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(json.dumps({"interactions": len(rows), "out": str(a.out)}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
