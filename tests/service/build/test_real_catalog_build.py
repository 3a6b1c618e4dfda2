"""`service build-index` on rows as a real marketplace holds them (the issue: a 19k-listing
electronics catalog stopped at line 13 on a 300-character compatibility list). Through main(argv):
every row is indexed, the stored record keeps the long values, HTML reaches neither the encoders
nor BM25, and the build report and the console summary count per field what was cut."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from index.lexical import read_documents
from service.cli import main

COMPAT = ", ".join(f"Galaxy S{i} / S{i}+ / S{i} Ultra (SM-G99{i}B)" for i in range(100))  # ~3.7k characters
TITLE_MIXED = ("Чехол для телефона 手机壳 غطاء الهاتف 🧣📱 " * 12).strip()  # ~480 characters, four scripts
DESCRIPTION = "<p>Charges <b>two laptops</b>&nbsp;at once.</p><ul><li>100&nbsp;W</li><li>GaN</li></ul>" * 60


def catalog_rows() -> list[dict]:
    rows = [{"id": f"E{i}", "title": f"USB-C charger {i} port", "category": "Chargers",
             "description": DESCRIPTION, "attributes": {"compatibility": COMPAT, "watts": str(20 * i)},
             "tags": [f"tag{j}" for j in range(55)]} for i in range(10)]
    rows.append({"id": "E10", "title": TITLE_MIXED, "description": "word " * 20_000,  # cut to 50,000 characters
                 "attributes": {"certifications": "CE; FCC; RoHS; " * 300}})
    rows.append({"id": "E11", "title": "Cable 3m &amp; adapter", "attributes": {"notes": "n" * 6_000}})
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    cols = {k: [r.get(k) for r in rows] for k in ("id", "title", "description", "tags", "category")}
    attrs = pa.array([list(r["attributes"].items()) for r in rows], type=pa.map_(pa.string(), pa.string()))
    pq.write_table(pa.table({**cols, "attributes": attrs}), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_build_index_indexes_real_rows_and_reports_cuts(tmp_path: Path, capsys, suffix: str) -> None:
    catalog = write(tmp_path / f"catalog{suffix}", catalog_rows())
    art = tmp_path / "store"
    rc = main(["build-index", "--catalog", str(catalog), "--artifacts", str(art), "--epochs", "0",
               "--device", "cpu", "--no-progress", "--version", "v1", "--image-cache", str(tmp_path / "cache")])
    assert rc == 0  # no --skip-bad-rows needed
    out = json.loads(capsys.readouterr().out)
    assert out["n_items"] == 12
    assert out["catalog"]["rows"] == out["catalog"]["loaded"] == 12 and out["catalog"]["rejected"] == 0
    assert out["catalog"]["truncated"] == {"attributes": 1, "description": 1}
    enc = out["catalog"]["encoder_truncated"]
    assert enc["description"] == {"budget_tokens": 128, "listings": 11, "truncated": 11}
    assert enc["tags"]["truncated"] >= 10 and enc["title"]["truncated"] == 1  # the 480-character title

    version = art / "versions" / "v1"
    report = json.loads((version / "report.json").read_text())
    assert report["inputs"]["catalog"]["truncated"] == out["catalog"]["truncated"]
    assert report["inputs"]["encoder_truncated"] == enc
    assert json.loads((version / "manifest.json").read_text())["catalog"]["truncated"] == out["catalog"]["truncated"]
    # the stored record keeps the long values whole
    with sqlite3.connect(version / "listings.sqlite") as con:
        attrs = dict(con.execute("SELECT id, attributes FROM listings").fetchall())
        titles = dict(con.execute("SELECT id, title FROM listings").fetchall())
    assert json.loads(attrs["E0"])["compatibility"] == COMPAT
    assert titles["E10"] == TITLE_MIXED and titles["E11"] == "Cable 3m & adapter"
    # BM25 indexes text, not markup
    docs = read_documents(version)
    assert docs is not None and len(docs) == 12
    assert "Charges two laptops at once. 100 W GaN" in docs[0]
    assert not any(s in d for d in docs for s in ("<p>", "<li>", "&nbsp;", "&amp;"))


def test_the_console_says_what_the_build_rejected_dropped_and_cut(tmp_path: Path, capsys) -> None:
    rows = catalog_rows()[:4] + [{"id": "BAD", "price": 3},  # no title: rejected
                                 {"id": "P1", "title": "Lamp", "images": ["photos/missing.jpg", "../../etc/x.jpg"]}]
    catalog = write(tmp_path / "catalog.jsonl", rows)
    rc = main(["build-index", "--catalog", str(catalog), "--artifacts", str(tmp_path / "store"), "--epochs", "0",
               "--device", "cpu", "--no-progress", "--skip-bad-rows", "--image-cache", str(tmp_path / "cache")])
    assert rc == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout stays one JSON document
    err = captured.err
    assert "catalog: 5 of 6 rows loaded" in err
    assert "catalog: 1 row(s) rejected (--skip-bad-rows): title: is missing (1)" in err
    assert f"{catalog}:5: title: is missing" in err
    assert "catalog: 2 image(s) dropped (the listings kept)" in err and "photos/missing.jpg" in err
    assert "catalog: fields cut to their stored limits" not in err  # nothing over a stored limit here
    assert "encoder: description: 4 of 4 listings longer than the 128-token budget" in err
