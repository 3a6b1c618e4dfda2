"""One catalog row's fields, validated against the limits (docs/DATA.md, "Limits").

Three kinds of limit, set so that real marketplace rows are indexed whole:
  - stored limits (MAX_TITLE_CHARS ... MAX_IMAGES): text beyond them is cut and the cut is
    counted per field (`Cuts`, the build report's `truncated`); the row is still indexed;
  - refusals: an id longer than MAX_ID_CHARS (an id is a key: cutting it could merge two listings);
  - absurd rows: any one field over MAX_FIELD_CHARS as read, a row over MAX_ROW_CHARS, a list or
    object over MAX_ENTRIES entries. These are refused with `field: reason`.
Lengths are in characters (a CJK character or an emoji is one), measured after HTML is reduced to
text (model/data/textclean.py); the absurd-row limits are measured on the values as read.
What the encoders see is a further cut by their token budgets (model/data/views.py `encoder_cuts`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from model.data.textclean import clean_text

# Stored limits: each is several times what real catalogs hold, so only runaway text is cut.
MAX_TITLE_CHARS = 2_000  # marketplace titles run to 200-500 characters
MAX_DESCRIPTION_CHARS = 50_000  # 10-20k is common for electronics and furniture
MAX_CATEGORY_CHARS = 1_000  # breadcrumb paths ("Electronics > Phones > Cases > ...")
MAX_TAGS = 200  # 50+ tags is ordinary; beyond 200, the rest are dropped
MAX_TAG_CHARS = 500
MAX_ATTRIBUTES = 200  # keys per listing; beyond, the rest are dropped
MAX_ATTRIBUTE_KEY_CHARS = 256
MAX_ATTRIBUTE_VALUE_CHARS = 5_000  # compatibility, feature and certification lists run to a few thousand
MAX_IMAGES = 50  # photos per listing; beyond, the rest are dropped
MAX_IMAGE_REF_CHARS = 4_096  # PATH_MAX: a longer reference drops that photo (model/data/catalog.py)
# Refused.
MAX_ID_CHARS = 1_024
# Absurd rows, refused with file:line: field: reason.
MAX_FIELD_CHARS = 1_000_000  # one field's values as read (a 1 MB description is no listing)
MAX_ROW_CHARS = 2_000_000  # all of a row's values together, unknown columns included
MAX_ENTRIES = 10_000  # tags, images or attribute keys in one row


class FieldError(Exception):
    def __init__(self, fld: str, reason: str):
        self.field, self.reason = fld, reason
        super().__init__(f"{fld}: {reason}")


Cut = Callable[[str, str], None]  # (field, what was cut) -> None


def _size(value: Any) -> int:
    """Characters a value holds as read (strings, list entries, object keys and values)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_size(k) + _size(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_size(v) for v in value)
    return 0 if value is None else 8


def check_size(row: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Refuse absurd rows: a contract field over MAX_FIELD_CHARS, then the row over MAX_ROW_CHARS."""
    total = 0
    for key, value in row.items():
        n = _size(value)
        if key in fields and n > MAX_FIELD_CHARS:
            raise FieldError(key, f"is {n:,} characters long (limit {MAX_FIELD_CHARS:,} for one field)")
        total += n
    if total > MAX_ROW_CHARS:
        raise FieldError("row", f"is {total:,} characters long (limit {MAX_ROW_CHARS:,} for a row)")


def _cut(text: str, limit: int, fld: str, cut: Cut) -> str:
    if len(text) <= limit:
        return text
    cut(fld, f"cut from {len(text):,} to {limit:,} characters")
    return text[:limit].rstrip()


def as_str(value: Any, fld: str, limit: int, cut: Cut, *, required: bool = False) -> str:
    """A text field, HTML reduced to text, cut to `limit` characters."""
    if value is None:
        if required:
            raise FieldError(fld, "is missing")
        return ""
    if isinstance(value, bool) or not isinstance(value, str):
        raise FieldError(fld, f"expected a string, got {type(value).__name__}")
    text = clean_text(value)
    if required and not text:
        raise FieldError(fld, "is empty")
    return _cut(text, limit, fld, cut)


def as_id(value: Any) -> str:
    """The listing id: a string or an integer (kept as a string), never cut: too long is refused."""
    if value is None:
        raise FieldError("id", "is missing")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise FieldError("id", f"expected a string, got {type(value).__name__}")
    text = clean_text(str(value), markup=False)
    if not text:
        raise FieldError("id", "is empty")
    if len(text) > MAX_ID_CHARS:
        raise FieldError("id", f"is {len(text):,} characters long (limit {MAX_ID_CHARS:,})")
    return text


def _split_pipe(value: str) -> list[str]:
    return [part.strip() for part in value.split("|") if part.strip()]


def _entries(value: Any, fld: str, limit: int, cut: Cut, *, csv_row: bool) -> list[Any]:
    if isinstance(value, str):
        if not csv_row:
            raise FieldError(fld, "expected a list of strings, got a string")
        value = _split_pipe(value)
    if not isinstance(value, list | tuple):
        raise FieldError(fld, f"expected a list of strings, got {type(value).__name__}")
    if len(value) > MAX_ENTRIES:
        raise FieldError(fld, f"has {len(value):,} entries (limit {MAX_ENTRIES:,})")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise FieldError(f"{fld}[{i}]", f"expected a string, got {type(item).__name__}")
    if len(value) > limit:
        cut(fld, f"{len(value):,} entries, kept the first {limit:,}")
        value = value[:limit]
    return list(value)


def as_tags(value: Any, cut: Cut, *, csv_row: bool) -> tuple[str, ...]:
    if value is None:
        return ()
    out = []
    for item in _entries(value, "tags", MAX_TAGS, cut, csv_row=csv_row):
        text = _cut(clean_text(item), MAX_TAG_CHARS, "tags", cut)
        if text:
            out.append(text)
    return tuple(out)


def as_images(value: Any, cut: Cut, *, csv_row: bool) -> tuple[str, ...]:
    """Image references as given (control characters dropped; no HTML: a path may hold `&`)."""
    if value is None:
        return ()
    refs = (clean_text(item, markup=False) for item in _entries(value, "images", MAX_IMAGES, cut, csv_row=csv_row))
    return tuple(ref for ref in refs if ref)


def as_attributes(value: Any, cut: Cut, *, csv_row: bool) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str) and csv_row:
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise FieldError("attributes", f"not a JSON object string ({e.msg})") from None
    if isinstance(value, list | tuple) and all(isinstance(p, list | tuple | dict) for p in value):
        # parquet map<string,string> arrives as [(key, value), ...] or [{"key":..,"value":..}]
        value = dict((p["key"], p["value"]) if isinstance(p, dict) else tuple(p) for p in value)
    if not isinstance(value, dict):
        raise FieldError("attributes", f"expected an object of strings, got {type(value).__name__}")
    if len(value) > MAX_ENTRIES:
        raise FieldError("attributes", f"has {len(value):,} keys (limit {MAX_ENTRIES:,})")
    out: dict[str, str] = {}
    for key, val in value.items():
        if isinstance(val, bool) or not isinstance(val, str | int | float):
            raise FieldError(f"attributes.{key}", f"expected a string or number, got {type(val).__name__}")
        if len(out) == MAX_ATTRIBUTES:
            cut("attributes", f"{len(value):,} keys, kept the first {MAX_ATTRIBUTES:,}")
            break
        k = _cut(clean_text(str(key)), MAX_ATTRIBUTE_KEY_CHARS, "attributes", cut)
        v = _cut(clean_text(str(val)), MAX_ATTRIBUTE_VALUE_CHARS, "attributes", cut)
        if k and v:
            out.setdefault(k, v)
    return out


def as_price(value: Any, *, csv_row: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, str) and csv_row:
        try:
            value = float(value)
        except ValueError:
            raise FieldError("price", f"not a number: {value[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError("price", f"expected a number, got {type(value).__name__}")
    price = float(value)
    if not math.isfinite(price) or price < 0:
        raise FieldError("price", f"must be a finite number >= 0, got {value!r}")
    return price
