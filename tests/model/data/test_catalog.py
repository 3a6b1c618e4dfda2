"""Catalog loading: formats, validation messages (file:line: field: reason), image handling,
and the accounting rule: every row is loaded or rejected with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from model.data.catalog import CatalogError, load_catalog, parse_column_map


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def good(i: int, **extra) -> dict:
    return {"id": f"L{i}", "title": f"Listing {i}", **extra}


@pytest.fixture
def img(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    p = tmp_path / "images" / "a.jpg"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(p)
    return p


def test_jsonl_loads_all_fields(tmp_path: Path, img: Path) -> None:
    row = good(1, description="d", tags=["a", "b"], attributes={"color": "red", "size": 3},
               category="mug", price=12.5, images=["images/a.jpg"])
    cat = load_catalog(write_jsonl(tmp_path / "c.jsonl", [row]))
    (lst,) = cat.listings
    assert (lst.id, lst.title, lst.tags, lst.category, lst.price) == ("L1", "Listing 1", ("a", "b"), "mug", 12.5)
    assert lst.attributes == {"color": "red", "size": "3"}
    assert lst.primary_image == str(img.resolve())
    assert cat.report.n_rows == cat.report.n_loaded == 1 and cat.report.sha256


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ({"title": "x"}, "id", "is missing (the row has: title; map yours with --columns id=KEY)"),
        ({"id": "", "title": "x"}, "id", "is empty"),
        ({"id": ["a"], "title": "x"}, "id", "expected a string, got list"),
        ({"id": "a"}, "title", "is missing (the row has: id; map yours with --columns title=KEY)"),
        ({"id": "a", "title": "   "}, "title", "is empty"),
        ({"id": "a", "title": 5}, "title", "expected a string, got int"),
        ({"id": "a", "title": "x", "tags": "red"}, "tags", "expected a list of strings, got a string"),
        ({"id": "a", "title": "x", "tags": ["ok", 3]}, "tags[1]", "expected a string, got int"),
        ({"id": "a", "title": "x", "price": "cheap"}, "price", "expected a number, got str"),
        ({"id": "a", "title": "x", "price": -1}, "price", "must be a finite number >= 0, got -1"),
        ({"id": "a", "title": "x", "attributes": ["red"]}, "attributes", "expected an object of strings, got list"),
        ({"id": "a", "title": "x", "attributes": {"k": {"n": 1}}}, "attributes.k", "expected a string or number, got dict"),
        # over a stored limit is cut, not refused (tests/model/data/test_catalog_limits.py); refused:
        ({"id": "i" * 1025, "title": "x"}, "id", "is 1,025 characters long (limit 1,024)"),
        ({"id": "a", "title": "x", "description": "d" * 1_000_001}, "description",
         "is 1,000,001 characters long (limit 1,000,000 for one field)"),
        ({"id": "a", "title": "x", "tags": ["t"] * 10_001}, "tags", "has 10,001 entries (limit 10,000)"),
        ({"id": "a", "title": "x", "notes": "n" * 1_000_000, "extra": "e" * 1_000_000}, "row",
         "is 2,000,002 characters long (limit 2,000,000 for a row)"),
    ],
)
def test_bad_field_names_file_line_and_field(tmp_path: Path, row: dict, field: str, reason: str) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [good(0), row])
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert str(err.value) == f"{path}:2: {field}: {reason}"


def test_malformed_lines_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "a", "title": "x"}\n{not json\n[1, 2]\n\xff\xfe bad utf8\n{"id": "a", "title": "y"}\n')
    with pytest.raises(CatalogError, match=r"c.jsonl:2: row: not valid JSON"):
        load_catalog(path)
    cat = load_catalog(path, skip_bad_rows=True)
    assert [lst.id for lst in cat.listings] == ["a"]
    reasons = [(r.line, r.field) for r in cat.report.rejected]
    assert reasons == [(2, "row"), (3, "row"), (4, "row"), (5, "id")]
    assert "duplicate id 'a' (first at line 1)" in cat.report.rejected[-1].reason
    assert cat.report.n_rows == cat.report.n_loaded + len(cat.report.rejected) == 5


def test_skip_bad_rows_accounts_for_every_row(tmp_path: Path) -> None:
    rows = [good(i) if i % 3 else {"id": f"L{i}"} for i in range(30)]
    cat = load_catalog(write_jsonl(tmp_path / "c.jsonl", rows), skip_bad_rows=True)
    assert cat.report.n_rows == 30
    assert cat.report.n_loaded == 20 and len(cat.report.rejected) == 10
    assert cat.report.to_dict()["rejected_by_reason"] == {"title: is missing": 10}


def test_images_missing_remote_and_escaping_are_dropped_not_rejected(tmp_path: Path, img: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside.jpg"
    Image.new("RGB", (4, 4)).save(outside)
    row = good(1, images=["images/missing.jpg", "images/a.jpg", "https://cdn.example/x.jpg",
                          "../" + outside.name, str(outside), f"file://{img}"])
    cat = load_catalog(write_jsonl(tmp_path / "c.jsonl", [row]))
    (lst,) = cat.listings
    assert lst.primary_image is None  # images[0] was missing: no primary photo
    assert lst.images == (str(img.resolve()), str(img.resolve())) and lst.image_slots == (1, 5)
    reasons = [d.reason for d in cat.report.dropped_images]
    assert reasons == ["missing file", "remote image; nothing is downloaded at build time",
                       "outside the allowed image roots", "outside the allowed image roots"]
    # an allowed extra root admits the outside file
    cat2 = load_catalog(write_jsonl(tmp_path / "c2.jsonl", [good(2, images=[str(outside)])]), images_root=tmp_path.parent)
    assert cat2.listings[0].primary_image == str(outside.resolve())


def test_csv_and_parquet(tmp_path: Path, img: Path) -> None:
    csv_path = tmp_path / "c.csv"
    csv_path.write_text(
        "id,title,tags,attributes,images,price,category\n"
        'L1,Red mug,gift|coffee,"{""color"": ""red""}",images/a.jpg|images/none.jpg,9.5,mug\n'
        "L2,,x,,,,\n"
        'L3,"Multi\nline title",,,,abc,\n'
    )
    with pytest.raises(CatalogError, match=r"c.csv:3: title: is missing"):
        load_catalog(csv_path)
    cat = load_catalog(csv_path, skip_bad_rows=True)
    (lst,) = cat.listings
    assert lst.tags == ("gift", "coffee") and lst.attributes == {"color": "red"} and lst.price == 9.5
    assert [(r.line, r.field) for r in cat.report.rejected] == [(3, "title"), (4, "price")]
    assert len(cat.report.dropped_images) == 1

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({
        "id": ["P1", "P2"], "title": ["Blue scarf", None], "tags": [["wool"], None],
        "attributes": pa.array([[("color", "blue")], None], type=pa.map_(pa.string(), pa.string())),
        "price": [20.0, None], "images": [["images/a.jpg"], None],
    })
    pq.write_table(table, tmp_path / "c.parquet")
    with pytest.raises(CatalogError, match=r"c.parquet:2: title: is missing"):
        load_catalog(tmp_path / "c.parquet")
    cat = load_catalog(tmp_path / "c.parquet", skip_bad_rows=True)
    assert cat.listings[0].attributes == {"color": "blue"} and cat.listings[0].primary_image


def test_column_map_renames_source_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"sku": "S1", "name": "Lamp", "kind": "lighting"}])
    cat = load_catalog(path, column_map="id=sku,title=name,category=kind")
    assert (cat.listings[0].id, cat.listings[0].title, cat.listings[0].category) == ("S1", "Lamp", "lighting")
    with pytest.raises(ValueError, match="'colour' is not a catalog field"):
        parse_column_map("colour=c")


def test_missing_columns_list_the_header_and_suggest_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path = tmp_path / "c.csv"
    csv_path.write_text("sku,name,price\nS1,Lamp,3\n")
    with pytest.raises(CatalogError, match=r"c.csv:1: header: no 'id' column; the header has: sku, name, price; "
                                           r"map yours with --columns id=COLUMN"):
        load_catalog(csv_path)
    with pytest.raises(CatalogError, match=r"c.csv:1: --columns: title=nme: the header has no column 'nme'; "
                                           r"its columns: sku, name, price"):
        load_catalog(csv_path, column_map="id=sku,title=nme")
    assert load_catalog(csv_path, column_map="id=sku,title=name").listings[0].title == "Lamp"
    with pytest.raises(CatalogError, match="header: no 'id' column"):  # no row can load: even with skipping
        load_catalog(csv_path, skip_bad_rows=True)
    pq_path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"sku": ["S1"], "title": ["Lamp"]}), pq_path)
    with pytest.raises(CatalogError, match=r"header: no 'id' column; the header has: sku, title"):
        load_catalog(pq_path)
    jsonl = write_jsonl(tmp_path / "c.jsonl", [{"sku": "S1", "name": "Lamp"}])
    with pytest.raises(CatalogError, match=r"c.jsonl:1: id: is missing \(the row has: sku, name; "
                                           r"map yours with --columns id=KEY\)"):
        load_catalog(jsonl)


def test_unsupported_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="unsupported format '.txt'"):
        load_catalog(tmp_path / "c.txt")
    with pytest.raises(CatalogError, match="no such file"):
        load_catalog(tmp_path / "none.jsonl")


def test_control_characters_are_cleaned(tmp_path: Path) -> None:
    cat = load_catalog(write_jsonl(tmp_path / "c.jsonl", [good(1, title="Red\x00 mug\u200f\tnow")]))
    assert cat.listings[0].title == "Red mug\u200f now"
