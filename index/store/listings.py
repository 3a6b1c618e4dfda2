"""Listing metadata for responses and filters: one SQLite file per artifact version.

Written once at build time; the server opens it read-only and immutable
(`file:...?mode=ro&immutable=1`), one connection per thread, so concurrent requests never lock.

`images` (a JSON list: every photo of the listing, the primary first) was added after the first
versions were built: a file without the column is read as if each listing had its primary photo
only, so older versions keep serving.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from index.filters import FilterColumns

SCHEMA = """
CREATE TABLE listings (
    row INTEGER PRIMARY KEY,     -- position in the index
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    image TEXT,                  -- the primary image reference as given in the catalog
    category TEXT,
    price REAL,
    attributes TEXT NOT NULL,    -- JSON object
    images TEXT                  -- JSON list of every image reference, the primary first
);
"""


@dataclass(frozen=True)
class ListingRecord:
    row: int
    id: str
    title: str
    image: str | None
    category: str | None
    price: float | None
    attributes: dict[str, str]
    images: tuple[str, ...] = ()  # every photo reference, images[0] == image; () -> just `image`

    def photos(self) -> list[str]:
        """Every photo reference, the primary first (a record without `images`: its primary)."""
        if self.images:
            return list(self.images)
        return [self.image] if self.image else []


def write_listings(path: str | Path, records: Iterable[ListingRecord]) -> int:
    """Create the SQLite file at `path` (must not exist); -> number of rows written."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: exists; metadata is written once per version")
    con = sqlite3.connect(path)
    try:
        con.executescript(SCHEMA)
        cur = con.executemany(
            "INSERT INTO listings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ((r.row, r.id, r.title, r.image, r.category, r.price, json.dumps(r.attributes, ensure_ascii=False),
              json.dumps(r.photos(), ensure_ascii=False)) for r in records),
        )
        n = cur.rowcount
        con.commit()
        con.execute("VACUUM")
    finally:
        con.close()
    return n


class ListingStore:
    """Read-only access; safe to share between threads (each thread gets its own connection)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no listing metadata")
        self._uri = f"file:{quote(str(self.path))}?mode=ro&immutable=1"
        self._local = threading.local()
        self.count = int(self._con().execute("SELECT COUNT(*) FROM listings").fetchone()[0])
        columns = {c[1] for c in self._con().execute("PRAGMA table_info(listings)")}
        self.has_images = "images" in columns  # False: a version written before the column existed
        self._record_sql = ("SELECT row, id, title, image, category, price, attributes, "
                            f"{'images' if self.has_images else 'NULL'} FROM listings")

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self._uri, uri=True, check_same_thread=True)
            self._local.con = con
        return con

    def get(self, rows: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Rows -> {row: {"id", "title", "image", "category", "price"}}."""
        if not rows:
            return {}
        unique = sorted({int(r) for r in rows if r >= 0})
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
            chunk = unique[start:start + 900]
            q = f"SELECT row, id, title, image, category, price FROM listings WHERE row IN ({','.join('?' * len(chunk))})"
            for row, lid, title, image, category, price in self._con().execute(q, chunk):
                out[row] = {"id": lid, "title": title, "image": image, "category": category, "price": price}
        return out

    def image_refs(self) -> list[str]:
        """Every image reference the listings name (the photos a demo image route may serve)."""
        if not self.has_images:
            return [r for (r,) in self._con().execute("SELECT image FROM listings WHERE image IS NOT NULL")]
        refs = [r for (r,) in self._con().execute("SELECT image FROM listings WHERE image IS NOT NULL")]
        for (images,) in self._con().execute("SELECT images FROM listings WHERE images IS NOT NULL"):
            refs.extend(json.loads(images))
        return refs

    @staticmethod
    def _record(row: int, lid: str, title: str, image: str | None, category: str | None, price: float | None,
                attributes: str, images: str | None) -> ListingRecord:
        return ListingRecord(row, lid, title, image, category, price, json.loads(attributes),
                             tuple(json.loads(images)) if images else ())

    def by_ids(self, ids: Iterable[str]) -> dict[str, ListingRecord]:
        """The full records of the given ids that this version holds, by id (unknown ids are skipped)."""
        wanted = sorted({str(i) for i in ids})
        out: dict[str, ListingRecord] = {}
        for start in range(0, len(wanted), 900):  # SQLite's bound-parameter limit
            chunk = wanted[start:start + 900]
            q = f"{self._record_sql} WHERE id IN ({','.join('?' * len(chunk))})"
            for values in self._con().execute(q, chunk):
                out[values[1]] = self._record(*values)
        return out

    def ids(self) -> list[str]:
        return [r[0] for r in self._con().execute("SELECT id FROM listings ORDER BY row")]

    def rows_of(self, ids: Iterable[str]) -> np.ndarray:
        """(m,) int64 sorted rows of the given ids that are in this version (unknown ids are skipped)."""
        wanted = sorted({str(i) for i in ids})
        out: list[int] = []
        for start in range(0, len(wanted), 900):  # SQLite's bound-parameter limit
            chunk = wanted[start:start + 900]
            q = f"SELECT row FROM listings WHERE id IN ({','.join('?' * len(chunk))})"
            out.extend(r for (r,) in self._con().execute(q, chunk))
        return np.asarray(sorted(out), dtype=np.int64)

    def present(self, ids: Iterable[str]) -> set[str]:
        """The given ids that this version holds."""
        wanted = sorted({str(i) for i in ids})
        out: set[str] = set()
        for start in range(0, len(wanted), 900):  # SQLite's bound-parameter limit
            chunk = wanted[start:start + 900]
            q = f"SELECT id FROM listings WHERE id IN ({','.join('?' * len(chunk))})"
            out.update(i for (i,) in self._con().execute(q, chunk))
        return out

    def records(self) -> Iterator[ListingRecord]:
        """Every listing in row order (e.g. to carry unchanged listings into an updated version)."""
        for values in self._con().execute(f"{self._record_sql} ORDER BY row"):
            yield self._record(*values)

    def filter_columns(self) -> FilterColumns:
        cats, prices, attrs = [], [], []
        for category, price, attributes in self._con().execute(
            "SELECT category, price, attributes FROM listings ORDER BY row"
        ):
            cats.append(category)
            prices.append(price)
            attrs.append(json.loads(attributes))
        return FilterColumns.from_rows(cats, prices, attrs)
