"""Catalog loading and validation: `.jsonl`, `.csv` and `.parquet` in, `Listing`s and a report out.

Every input row ends up either loaded or rejected with a reason (`file:line: field: reason`). By
default the first bad row stops the load (`CatalogError`); with `skip_bad_rows=True` bad rows are
skipped and counted. A missing, remote or out-of-bounds image never rejects a listing: that view is
dropped and counted in the report. Text over a stored limit is cut, never rejected, and counted per
field (`truncated`); the three formats share the limits (model/data/fields.py, docs/DATA.md).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from model.data.fields import (  # noqa: F401 - the limits are part of this module's interface
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_ATTRIBUTES,
    MAX_CATEGORY_CHARS,
    MAX_DESCRIPTION_CHARS,
    MAX_ENTRIES,
    MAX_FIELD_CHARS,
    MAX_ID_CHARS,
    MAX_IMAGE_REF_CHARS,
    MAX_IMAGES,
    MAX_ROW_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TITLE_CHARS,
    Cut,
    FieldError,
    as_attributes,
    as_id,
    as_images,
    as_price,
    as_str,
    as_tags,
    check_size,
)

FIELDS = ("id", "title", "description", "tags", "attributes", "category", "price", "images")
SUPPORTED_SUFFIXES = (".jsonl", ".csv", ".parquet")


class CatalogError(ValueError):
    """A bad row or file: `str(err)` is `file:line: field: reason`."""

    def __init__(self, file: str, line: int | None, field: str, reason: str):
        self.file, self.line, self.field, self.reason = file, line, field, reason
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {field}: {reason}")


@dataclass(frozen=True)
class Listing:
    """One validated catalog row. `images` are resolved absolute paths of the usable photos,
    `image_slots` their positions in the row's `images` list (slot 0 is the primary photo)."""

    id: str
    title: str
    description: str = ""
    tags: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)
    category: str = ""
    price: float | None = None
    images: tuple[str, ...] = ()
    image_slots: tuple[int, ...] = ()
    raw_images: tuple[str, ...] = ()  # the row's own image references, for responses
    line: int = 0

    @property
    def primary_image(self) -> str | None:
        """The primary photo's path, or None when images[0] was missing or dropped."""
        if self.image_slots and self.image_slots[0] == 0:
            return self.images[0]
        return None

    @property
    def other_images(self) -> tuple[str, ...]:
        return tuple(p for p, s in zip(self.images, self.image_slots, strict=True) if s != 0)


@dataclass(frozen=True)
class RejectedRow:
    line: int
    field: str
    reason: str
    id: str | None = None


@dataclass(frozen=True)
class DroppedImage:
    listing_id: str
    line: int
    image: str
    reason: str


@dataclass
class LoadReport:
    """What happened to every row: `n_rows == n_loaded + len(rejected)` always holds."""

    file: str
    n_rows: int = 0
    n_loaded: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    dropped_images: list[DroppedImage] = field(default_factory=list)
    sha256: str = ""
    # Listings loaded with a field cut to its stored limit, per field; a few `file:line: field: how`.
    truncated: Counter[str] = field(default_factory=Counter)
    truncated_examples: list[str] = field(default_factory=list)

    def to_dict(self, max_examples: int = 50) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "rows": self.n_rows,
            "loaded": self.n_loaded,
            "rejected": len(self.rejected),
            "rejected_by_reason": dict(Counter(f"{r.field}: {r.reason}" for r in self.rejected)),
            "rejected_examples": [
                f"{self.file}:{r.line}: {r.field}: {r.reason}" for r in self.rejected[:max_examples]
            ],
            "dropped_images": len(self.dropped_images),
            "dropped_images_by_reason": dict(Counter(d.reason for d in self.dropped_images)),
            "dropped_image_examples": [
                f"{self.file}:{d.line}: images: {d.image[:200]}: {d.reason}"
                for d in self.dropped_images[:max_examples]
            ],
            "truncated": dict(sorted(self.truncated.items())),
            "truncated_examples": self.truncated_examples[:max_examples],
        }


def describe_load(report: Mapping[str, Any], examples: int = 5) -> list[str]:
    """A `LoadReport.to_dict()` as lines for a person (the build's console): what was rejected,
    dropped and cut, each with its reasons and a few `file:line` examples."""
    lines = [f"catalog: {report.get('loaded', 0):,} of {report.get('rows', 0):,} rows loaded from {report.get('file')}"]
    parts = [("rejected", "row(s) rejected (--skip-bad-rows)", "rejected_by_reason", "rejected_examples"),
             ("dropped_images", "image(s) dropped (the listings kept)", "dropped_images_by_reason",
              "dropped_image_examples")]
    for count, what, by_reason, shown in parts:
        n = int(report.get(count) or 0)
        if not n:
            continue
        reasons = sorted((report.get(by_reason) or {}).items(), key=lambda kv: -kv[1])
        lines.append(f"catalog: {n:,} {what}: " + "; ".join(f"{r} ({c:,})" for r, c in reasons[:examples]))
        lines += [f"  {e}" for e in (report.get(shown) or [])[:examples]]
    cut = report.get("truncated") or {}
    if cut:
        lines.append("catalog: fields cut to their stored limits (listings kept; docs/DATA.md Limits): "
                     + ", ".join(f"{k} {v:,}" for k, v in sorted(cut.items())))
        lines += [f"  {e}" for e in (report.get("truncated_examples") or [])[:examples]]
    return lines


@dataclass(frozen=True)
class Catalog:
    listings: list[Listing]
    report: LoadReport

    def __len__(self) -> int:
        return len(self.listings)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def parse_column_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """`"title=name,id=sku"` (contract field = source column) -> {"name": "title", "sku": "id"}.

    Real catalogs never match the contract exactly; this renames source columns on read."""
    if not spec:
        return {}
    pairs = spec.items() if isinstance(spec, Mapping) else (
        part.split("=", 1) if "=" in part else (part, "") for part in spec.split(",") if part.strip()
    )
    out: dict[str, str] = {}
    for target, source in pairs:
        target, source = str(target).strip(), str(source).strip()
        if target not in FIELDS:
            raise ValueError(f"column map: {target!r} is not a catalog field ({', '.join(FIELDS)})")
        if not source:
            raise ValueError(f"column map: {target!r} needs a source column, as in {target}=column")
        out[source] = target
    return out


# --------------------------------------------------------------------------- readers: (line, row)


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | CatalogError]]:
    """THE JSONL reader of every input (catalogs, interactions, events, judgments): (line, object),
    or (line, CatalogError) for a line that is not UTF-8, not JSON or not an object; blank lines skipped."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, CatalogError(str(path), lineno, "row", f"not valid UTF-8 ({e.reason} at byte {e.start})")
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                yield lineno, CatalogError(str(path), lineno, "row", f"not valid JSON ({e.msg})")
                continue
            if not isinstance(row, dict):
                yield lineno, CatalogError(str(path), lineno, "row", f"expected a JSON object, got {type(row).__name__}")
                continue
            yield lineno, row


def _not_utf8(text: str) -> bool:
    """True when `text` holds bytes that were not UTF-8 (decoded with errors="surrogateescape")."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | CatalogError]]:
    # The csv module refuses fields over 128 KiB by default; our own limits decide (model/data/fields.py).
    # (A process-wide setting; it is only ever raised.)
    if csv.field_size_limit() < MAX_ROW_CHARS + 1:
        csv.field_size_limit(MAX_ROW_CHARS + 1)
    # surrogateescape: a bad byte costs its own row (rejected with the reason), never the rest of the file
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        header = f.readline()
        if _not_utf8(header):
            raise CatalogError(str(path), 1, "header", "not valid UTF-8 (no row can be read without the header)")
        f.seek(0)
        reader = csv.DictReader(f)
        line = 1 if header else 0
        while True:
            try:
                raw = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # e.g. a field over the csv module's size limit: this row only
                start, line = line + 1, reader.line_num
                why = (f"a field over {MAX_ROW_CHARS:,} characters (the limit for a whole row)"
                       if "field larger than field limit" in str(e) else f"malformed CSV ({e})")
                yield start, CatalogError(str(path), start, "row", why)
                continue
            start, line = line + 1, reader.line_num
            if None in raw:
                yield start, CatalogError(str(path), start, "row", "more fields than the header has columns")
                continue
            if any(isinstance(v, str) and _not_utf8(v) for v in raw.values()):
                yield start, CatalogError(str(path), start, "row", "not valid UTF-8")
                continue
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if value is None or value == "":
                    continue
                row[key] = value
            yield start, row


def _read_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any] | CatalogError]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is in the train extra
        raise CatalogError(str(path), None, "file", "reading .parquet needs pyarrow (pip install '.[train]')") from e
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise CatalogError(str(path), None, "file", f"not a readable parquet file ({e})") from e
    rowno = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            rowno += 1
            yield rowno, {k: v for k, v in row.items() if v is not None}


# --------------------------------------------------------------------------- images


class ImageResolver:
    """Turns a row's image references into paths inside the allowed roots, or a drop reason."""

    def __init__(self, catalog_path: Path, images_root: str | Path | Sequence[str | Path] | None = None):
        roots: list[str | Path] = [catalog_path.parent]
        if images_root:
            roots += [images_root] if isinstance(images_root, str | Path) else list(images_root)
        self.base = catalog_path.parent.resolve()
        self.roots = [Path(r).resolve() for r in roots]

    def resolve(self, ref: str) -> tuple[str | None, str]:
        """-> (absolute path, "") or (None, reason)."""
        if len(ref) > MAX_IMAGE_REF_CHARS:
            return None, f"reference longer than {MAX_IMAGE_REF_CHARS:,} characters"
        if "\x00" in ref:
            return None, "path contains a NUL byte"
        parsed = urlparse(ref)
        if parsed.scheme in ("http", "https", "ftp", "s3", "gs"):
            return None, "remote image; nothing is downloaded at build time"
        if parsed.scheme == "file":
            ref = unquote(parsed.path)
        elif parsed.scheme and len(parsed.scheme) > 1:
            return None, f"unsupported URL scheme {parsed.scheme!r}"
        candidate = Path(ref)
        if not candidate.is_absolute():
            candidate = self.base / candidate
        try:
            real = candidate.resolve()
        except (OSError, RuntimeError) as e:
            return None, f"cannot resolve path ({e})"
        if not any(real == root or root in real.parents for root in self.roots):
            return None, "outside the allowed image roots"
        try:  # a name over the file system's limits is this image's problem, not the whole build's
            if not real.is_file():
                return None, "missing file"
            if not os.access(real, os.R_OK):
                return None, "unreadable file"
        except OSError as e:
            return None, f"cannot read path ({e.strerror or e})"
        return str(real), ""


# --------------------------------------------------------------------------- the loader


def _validate_row(row: dict[str, Any], *, csv_row: bool, cut: Cut) -> dict[str, Any]:
    check_size(row, FIELDS)
    return {
        # integer ids are accepted (CSV and parquet readers infer them) and kept as strings
        "id": as_id(row.get("id")),
        "title": as_str(row.get("title"), "title", MAX_TITLE_CHARS, cut, required=True),
        "description": as_str(row.get("description"), "description", MAX_DESCRIPTION_CHARS, cut),
        "tags": as_tags(row.get("tags"), cut, csv_row=csv_row),
        "attributes": as_attributes(row.get("attributes"), cut, csv_row=csv_row),
        "category": as_str(row.get("category"), "category", MAX_CATEGORY_CHARS, cut),
        "price": as_price(row.get("price"), csv_row=csv_row),
        "images": as_images(row.get("images"), cut, csv_row=csv_row),
    }


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | CatalogError]]:
    """Raw rows of a catalog file as (line or row number, dict), or a CatalogError for that line."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise CatalogError(str(p), None, "file", f"unsupported format {suffix!r} (use {', '.join(SUPPORTED_SUFFIXES)})")
    if not p.is_file():
        raise CatalogError(str(p), None, "file", "no such file")
    reader = {".jsonl": read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}[suffix]
    yield from reader(p)


REQUIRED = ("id", "title")


def header_columns(path: Path) -> list[str] | None:
    """The column names of a CSV or parquet catalog (None for JSONL, which has no header)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            header = next(csv.reader(f), [])
        return None if any(_not_utf8(c) for c in header) else header  # the reader says "not valid UTF-8"
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        except Exception:  # noqa: BLE001 - the reader reports an unreadable file with its own message
            return None
    return None


def check_header(path: Path, renames: Mapping[str, str]) -> None:
    """A `--columns` source the header lacks, or a required field no column gives: one clear error
    that lists the header, before any row is read (every row would fail the same way)."""
    columns = header_columns(path) if path.is_file() else None
    if columns is None:
        return
    shown = ", ".join(columns[:40]) + (f" (+{len(columns) - 40} more)" if len(columns) > 40 else "")
    line = 1 if path.suffix.lower() == ".csv" else None
    missing_sources = [src for src in renames if src not in columns]
    if missing_sources:
        src = missing_sources[0]
        raise CatalogError(str(path), line, "--columns",
                           f"{renames[src]}={src}: the header has no column {src!r}; its columns: {shown}")
    given = {renames.get(c, c) for c in columns}
    for fld in REQUIRED if "deleted" not in given else ("id",):  # a delta's deletion rows need no title
        if fld not in given:
            raise CatalogError(str(path), line, "header",
                               f"no {fld!r} column; the header has: {shown}; map yours with --columns {fld}=COLUMN")


def load_catalog(
    path: str | Path,
    *,
    skip_bad_rows: bool = False,
    images_root: str | Path | Sequence[str | Path] | None = None,
    column_map: str | Mapping[str, str] | None = None,
) -> Catalog:
    """Load and validate a catalog. Raises CatalogError on the first bad row unless skip_bad_rows."""
    p = Path(path)
    report = LoadReport(file=str(p))
    renames = parse_column_map(column_map)
    check_header(p, renames)
    resolver = ImageResolver(p, images_root)
    csv_row = p.suffix.lower() == ".csv"
    listings: list[Listing] = []
    seen: dict[str, int] = {}
    for line, row in iter_rows(p):
        report.n_rows += 1
        cuts: dict[str, str] = {}
        try:
            if isinstance(row, CatalogError):
                raise row
            if renames:
                row = {renames.get(k, k): v for k, v in row.items()}
            try:
                values = _validate_row(row, csv_row=csv_row, cut=cuts.setdefault)
            except FieldError as e:
                reason = e.reason
                if e.field in REQUIRED and reason == "is missing" and not skip_bad_rows:  # spelled otherwise?
                    keys = ", ".join(list(row)[:20]) or "nothing"
                    reason += f" (the row has: {keys}; map yours with --columns {e.field}=KEY)"
                raise CatalogError(str(p), line, e.field, reason) from None
            if values["id"] in seen:
                raise CatalogError(str(p), line, "id", f"duplicate id {values['id']!r} (first at line {seen[values['id']]})")
        except CatalogError as err:
            if not skip_bad_rows:
                raise
            rid = row.get("id") if isinstance(row, dict) else None
            report.rejected.append(RejectedRow(line, err.field, err.reason, str(rid) if rid is not None else None))
            continue
        seen[values["id"]] = line
        for fld, how in cuts.items():
            report.truncated[fld] += 1
            if len(report.truncated_examples) < 50:
                report.truncated_examples.append(f"{p}:{line}: {fld}: {how}")
        paths, slots = [], []
        for slot, ref in enumerate(values["images"]):
            resolved, reason = resolver.resolve(ref)
            if resolved is None:
                report.dropped_images.append(DroppedImage(values["id"], line, ref, reason))
            else:
                paths.append(resolved)
                slots.append(slot)
        listings.append(
            Listing(
                id=values["id"], title=values["title"], description=values["description"],
                tags=values["tags"], attributes=values["attributes"], category=values["category"],
                price=values["price"], images=tuple(paths), image_slots=tuple(slots),
                raw_images=values["images"], line=line,
            )
        )
    report.n_loaded = len(listings)
    report.sha256 = file_sha256(p)
    return Catalog(listings, report)
