"""Limits that fit real catalogs: rows as real marketplaces hold them (long attribute values, 10-20k
descriptions in HTML, 50+ tags, 20+ photos, long non-Latin titles) load whole in all three formats;
text over a stored limit is cut and counted per field; only absurd rows are refused; HTML is
reduced to text."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from model.data.catalog import (
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_DESCRIPTION_CHARS,
    MAX_IMAGES,
    MAX_TAGS,
    MAX_TITLE_CHARS,
    CatalogError,
    Listing,
    load_catalog,
)
from model.data.textclean import clean_text, strip_html

COMPAT = ", ".join(f"Galaxy S{i} / S{i}+ / S{i} Ultra (SM-G99{i}B)" for i in range(100))  # ~3.7k characters
DESCRIPTION_HTML = "<div><h2>Overview</h2>" + "<p>Fits&nbsp;<b>iPhone 15</b> &amp; Pixel&#160;8.</p>" * 400 + "</div>"
TITLE_MIXED = ("Чехол для телефона 手机壳 غطاء الهاتف 🧣📱 " * 12).strip()  # ~480 characters, four scripts


def real_rows() -> list[dict]:
    return [
        {"id": "R1", "title": "USB-C hub", "attributes": {"compatibility": COMPAT, "ports": "4"}},
        {"id": "R2", "title": TITLE_MIXED, "description": DESCRIPTION_HTML,
         "tags": [f"tag{i}" for i in range(60)], "images": [f"images/{i}.jpg" for i in range(25)]},
        {"id": "R3", "title": "Cable <3m> &amp; AT&T", "category": "Electronics &gt; Cables",
         "attributes": {"certifications": "CE; FCC; RoHS; " * 300}},  # ~4.5k characters
        # over the stored limits: cut and counted, still indexed
        {"id": "R4", "title": "t" * (MAX_TITLE_CHARS + 10), "description": "word " * 12_000,
         "tags": [f"x{i}" for i in range(MAX_TAGS + 5)], "attributes": {"notes": "n" * (MAX_ATTRIBUTE_VALUE_CHARS + 1)},
         "images": [f"images/{i}.jpg" for i in range(MAX_IMAGES + 3)]},
    ]


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["id", "title", "description", "tags", "attributes", "category", "images"])
            w.writeheader()
            for r in rows:
                w.writerow({k: ("|".join(v) if isinstance(v, list) else json.dumps(v) if isinstance(v, dict) else v)
                            for k, v in r.items()})
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        cols = {k: [r.get(k) for r in rows] for k in ("id", "title", "description", "tags", "category", "images")}
        cols["attributes"] = [list(r["attributes"].items()) if "attributes" in r else None for r in rows]
        table = pa.table({**{k: v for k, v in cols.items() if k != "attributes"},
                          "attributes": pa.array(cols["attributes"], type=pa.map_(pa.string(), pa.string()))})
        pq.write_table(table, path)
    return path


def by_id(listings: list[Listing]) -> dict[str, Listing]:
    return {lst.id: lst for lst in listings}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_real_rows_load_whole_in_every_format(tmp_path: Path, suffix: str) -> None:
    cat = load_catalog(write(tmp_path / f"c{suffix}", real_rows()))  # strict: no row is refused
    got = by_id(cat.listings)
    assert sorted(got) == ["R1", "R2", "R3", "R4"] and not cat.report.rejected
    assert got["R1"].attributes["compatibility"] == COMPAT  # was: "longer than 256 characters"
    r2 = got["R2"]
    assert r2.title == TITLE_MIXED and len(r2.tags) == 60 and len(r2.raw_images) == 25
    assert r2.description.startswith("Overview Fits iPhone 15 & Pixel 8. Fits iPhone 15")
    assert "<" not in r2.description and "&" in r2.description and "  " not in r2.description
    assert got["R3"].title == "Cable <3m> & AT&T" and got["R3"].category == "Electronics > Cables"
    r4 = got["R4"]
    assert len(r4.title) == MAX_TITLE_CHARS and len(r4.description) <= MAX_DESCRIPTION_CHARS
    assert len(r4.tags) == MAX_TAGS and len(r4.raw_images) == MAX_IMAGES
    assert len(r4.attributes["notes"]) == MAX_ATTRIBUTE_VALUE_CHARS
    # one listing cut per field, nothing else counted
    assert dict(cat.report.truncated) == {"attributes": 1, "description": 1, "images": 1, "tags": 1, "title": 1}
    rep = cat.report.to_dict()
    assert rep["truncated"] == dict(cat.report.truncated)
    assert f"{tmp_path / f'c{suffix}'}:{r4.line}: title: cut from 2,010 to 2,000 characters" in rep["truncated_examples"]


def test_three_formats_agree(tmp_path: Path) -> None:
    loaded = [by_id(load_catalog(write(tmp_path / f"c{s}", real_rows())).listings) for s in (".jsonl", ".csv", ".parquet")]

    def fields(lst: Listing) -> tuple:
        return (lst.title, lst.description, lst.tags, dict(lst.attributes), lst.category, lst.raw_images)

    for other in loaded[1:]:
        assert {k: fields(v) for k, v in other.items()} == {k: fields(v) for k, v in loaded[0].items()}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_absurd_field_is_refused_with_file_line_field(tmp_path: Path, suffix: str) -> None:
    rows = [{"id": "A1", "title": "ok"}, {"id": "A2", "title": "big", "description": "d" * 1_000_001}]
    path = write(tmp_path / f"c{suffix}", rows)
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    line = 3 if suffix == ".csv" else 2  # CSV: the header is line 1
    assert str(err.value) == f"{path}:{line}: description: is 1,000,001 characters long (limit 1,000,000 for one field)"
    cat = load_catalog(path, skip_bad_rows=True)
    assert [lst.id for lst in cat.listings] == ["A1"] and cat.report.n_rows == 2


def test_html_is_reduced_to_text() -> None:
    html = "<ul><li>USB-C</li><li>Qi&nbsp;charging</li></ul><p>Sam<b>sung</b>\n\n&lt;b&gt;</p><script>x()</script><!-- c -->"
    assert clean_text(html) == "USB-C Qi charging Samsung <b>"
    for plain in ("5 < 6 and 7 > 3", "AT&T", "Cable <3m>", "a <b", "R&D; 100%"):
        assert strip_html(plain) == plain
    assert clean_text("  tab\there\r\nnl \u00a0 x ") == "tab here nl x"
    assert clean_text("id\twith  two", markup=False) == "id with  two"  # ids keep their spacing
