"""Training signal (`interactions.jsonl`) and evaluation labels (`judgments.jsonl`).

interactions: {"query": str, "item_id": str, "weight"?: number > 0}
judgments:    {"query": str, "item_id": str, "relevance": number, "title_answerable"?: bool}

A judgment counts as relevant when its relevance is above the lowest grade in the file; its gain is
relevance - lowest grade (so the lowest grade marks judged non-relevant listings).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.catalog import CatalogError

MAX_QUERY_CHARS = 1_000


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

    def to_dict(self, max_examples: int = 20) -> dict[str, Any]:
        return {
            "file": self.file, "rows": self.rows, "loaded": self.loaded,
            "rejected": len(self.rejected), "rejected_examples": self.rejected[:max_examples],
            "unknown_items": self.unknown_items,
        }


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | CatalogError]]:
    if not path.is_file():
        raise CatalogError(str(path), None, "file", "no such file")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, CatalogError(str(path), lineno, "row", f"not valid UTF-8 ({e.reason})")
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                yield lineno, CatalogError(str(path), lineno, "row", f"not valid JSON ({e.msg})")
                continue
            if not isinstance(row, dict):
                yield lineno, CatalogError(str(path), lineno, "row", "expected a JSON object")
                continue
            yield lineno, row


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


def load_interactions(
    path: str | Path, known_ids: set[str] | None = None, *, skip_bad_rows: bool = False
) -> tuple[list[Interaction], SignalReport]:
    """Interactions whose item is in the catalog; others are counted (a sold listing is normal)."""
    p = Path(path)
    report = SignalReport(str(p))
    out: list[Interaction] = []
    for line, row in _rows(p):
        report.rows += 1
        try:
            if isinstance(row, CatalogError):
                raise row
            query, item = _text(row, "query", p, line), _text(row, "item_id", p, line)
            weight = _number(row, "weight", p, line, 1.0)
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
