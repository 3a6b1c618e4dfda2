"""A fresh catalog without retraining: `update-index` upserts and deletes with the current towers
and publishes a new version; the deny-list hides listings at once in the engine (k results kept),
across replicas within the poll interval, through `service deny` and `POST /admin/deny`."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index.store import denylist
from index.store.artifacts import ArtifactStore
from index.store.listings import ListingStore
from model.data.catalog import CatalogError
from service.build.update import load_delta, update_index
from service.cli import main


def catalog_rows(sample: Path) -> list[dict]:
    return [json.loads(line) for line in (sample / "catalog.jsonl").read_text().splitlines()]


def copy_store(tiny_build, dst: Path) -> Path:
    src = tiny_build.path.parent.parent
    shutil.copytree(src / "versions" / tiny_build.version, dst / "versions" / tiny_build.version)
    shutil.copyfile(src / "current", dst / "current")
    return dst


@pytest.fixture(scope="module")
def updated(tiny_build, tiny_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("update")
    art = copy_store(tiny_build, root / "artifacts")
    rows = catalog_rows(tiny_sample)
    absolute = lambda r: {**r, "images": [str(tiny_sample / p) for p in r.get("images", [])]}  # noqa: E731
    new = absolute({**rows[0], "id": "NEW-1", "title": "Brand new lavender enamel teapot"})
    changed = absolute({**rows[1], "title": "Reworded: " + rows[1]["title"], "price": 1.25})
    delta = root / "delta.jsonl"  # elsewhere than the catalog: its images are found under --images-root
    delta.write_text("".join(json.dumps(r) + "\n" for r in
                             [new, changed, {"id": rows[2]["id"], "deleted": True}, {"id": "ghost", "deleted": True}]))
    ids_file = root / "sold.txt"
    ids_file.write_text(f"# sold today\n{rows[3]['id']}\n")
    denylist.update(denylist.denylist_path(art), add=[rows[2]["id"], rows[5]["id"]])  # sold before the update
    result = update_index(art, delta, ids_file, device="cpu", images_root=tiny_sample)
    return {"art": art, "rows": rows, "result": result, "parent": tiny_build, "delta": delta}


def test_update_publishes_a_merged_version(updated) -> None:
    res, parent, rows = updated["result"], updated["parent"], updated["rows"]
    m = res.manifest
    assert res.published and ArtifactStore(updated["art"]).current_version() == res.version
    ArtifactStore(updated["art"]).verify(res.version)
    assert m["parent_version"] == parent.version and m["index_key"] == parent.manifest["index_key"]
    assert {k: m["update"][k] for k in ("added", "changed", "deleted", "not_found")} == \
        {"added": 1, "changed": 1, "deleted": 2, "not_found": 1}
    assert m["n_items"] == 120 + 1 - 2 and m["model_digest"] == parent.manifest["model_digest"]
    assert m["parent_metrics"] == parent.manifest["metrics"] and m["catalog"]["updates"][-1]["sha256"]
    assert m["update"]["images"]["images"] > 0 and m["update"]["images"]["unreadable"] == 0  # photos embedded too
    store = ListingStore(res.path / "listings.sqlite")
    ids = store.ids()
    assert rows[2]["id"] not in ids and rows[3]["id"] not in ids and "NEW-1" in ids
    assert len(set(ids)) == len(ids) == m["n_items"]
    row = int(store.rows_of([rows[1]["id"]])[0])
    assert store.get([row])[row]["title"].startswith("Reworded: ") and store.get([row])[row]["price"] == 1.25


def test_unchanged_listings_keep_their_vectors_and_new_ones_use_the_current_towers(updated, tiny_sample: Path) -> None:
    import torch

    from model.checkpoint import load_model
    from model.data.catalog import load_catalog
    from model.encoders.tokenizer import Tokenizer
    from service.build.stages import embed_with_model

    res, parent, rows = updated["result"], updated["parent"], updated["rows"]
    old_ids, new_ids = ListingStore(parent.path / "listings.sqlite").ids(), ListingStore(res.path / "listings.sqlite").ids()
    old_v, new_v = np.load(parent.path / "vectors.npy"), np.load(res.path / "vectors.npy")
    pos = {i: r for r, i in enumerate(new_ids)}
    for r, lid in enumerate(old_ids):
        if lid in pos and lid != rows[1]["id"]:
            np.testing.assert_array_equal(new_v[pos[lid]], old_v[r])
    listings = load_catalog(updated["delta"], skip_bad_rows=True, images_root=tiny_sample).listings  # the 2 upserts
    model = load_model(parent.path / "model.safetensors")
    want, _ = embed_with_model(model, Tokenizer(parent.path / "tokenizer.json"), listings, torch.device("cpu"),
                               updated["art"] / "cache" / "images")
    got = new_v[[pos["NEW-1"], pos[rows[1]["id"]]]].astype(np.float32)
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert not np.allclose(new_v[pos[rows[1]["id"]]], old_v[old_ids.index(rows[1]["id"])], atol=1e-3)  # re-embedded


def test_update_serves_the_new_listing_and_gc_prunes_the_denylist(updated) -> None:
    from service.serving.engine import Engine, SearchRequest
    from service.serving.settings import Settings

    rows, art = updated["rows"], updated["art"]
    engine = Engine(Settings(artifacts=art, reload_poll_s=0, warmup_queries=1))
    engine.load()
    hits = engine.search_batch([SearchRequest("brand new lavender enamel teapot", k=5)]).hits[0]
    assert hits[0].id == "NEW-1"
    # the deleted listing stays denied while a version holding it is kept (replica lag, roll-back) ...
    path = denylist.denylist_path(art)
    assert denylist.read_ids(path) == {rows[2]["id"], rows[5]["id"]}
    ArtifactStore(art).publish(updated["parent"].version)  # roll back: the sold listing stays hidden
    engine.load()
    assert engine.deny_rows(engine.current).rows.size == 2
    ArtifactStore(art).publish(updated["result"].version)
    # ... and leaves it once retention removed the last version that held it; the sold one stays
    assert main(["gc", "--artifacts", str(art), "--keep-versions", "1"]) == 0
    assert denylist.read_ids(path) == {rows[5]["id"]}
    assert ArtifactStore(art).list_versions() == [updated["result"].version]


def test_bad_deltas_are_refused(tiny_sample: Path, tmp_path: Path) -> None:
    rows = catalog_rows(tiny_sample)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "X1", "price": 3}) + "\n")  # no title, not a deletion
    with pytest.raises(CatalogError, match=r"bad.jsonl:1: title"):
        load_delta(bad)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("L-gone\n")
    assert load_delta(bad, ids_file, skip_bad_rows=True).report["rejected"] == 1  # skipped and reported
    both = tmp_path / "both.jsonl"
    both.write_text(json.dumps({**rows[0], "images": []}) + "\n" + json.dumps({"id": rows[0]["id"], "deleted": True}) + "\n")
    with pytest.raises(CatalogError, match="both upserted and deleted"):
        load_delta(both)
    upsert = tmp_path / "upsert.jsonl"
    upsert.write_text(json.dumps({**rows[0], "images": []}) + "\n")
    ids_file.write_text(rows[0]["id"] + "\n")
    with pytest.raises(CatalogError, match="both upserted and deleted"):
        load_delta(upsert, ids_file)  # the id file and the delta disagree
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="nothing to upsert or delete"):
        load_delta(empty)
    assert main(["update-index", "--artifacts", str(tmp_path)]) == 2  # neither a delta nor ids


def test_delta_shares_the_catalog_limits(tmp_path: Path) -> None:
    """A delta row with a long attribute value (a compatibility list) or HTML is upserted, its cuts
    counted, like in a catalog (model/data/fields.py)."""
    delta = tmp_path / "delta.jsonl"
    delta.write_text(json.dumps({"id": "N1", "title": "<b>Hub</b> &amp; dock", "description": "d " * 40_000,
                                 "attributes": {"compatibility": "Galaxy S24, " * 100}}) + "\n")
    got = load_delta(delta)
    (lst,) = got.upserts
    assert lst.title == "Hub & dock" and len(lst.attributes["compatibility"]) > 1_000
    assert got.report["rejected"] == 0 and got.report["truncated"] == {"description": 1}


def test_deletion_rows_read_the_id_from_the_mapped_column(tmp_path: Path) -> None:
    """`--columns id=sku` holds for deletion rows as for upserts, in CSV and JSONL."""
    csv_delta = tmp_path / "dA.csv"
    csv_delta.write_text("sku,name,deleted\nN1,New lamp,\nL000003,,true\n")
    got = load_delta(csv_delta, columns="id=sku,title=name")
    assert [lst.id for lst in got.upserts] == ["N1"] and got.deletions == ["L000003"]
    jsonl_delta = tmp_path / "dA.jsonl"
    jsonl_delta.write_text(json.dumps({"sku": "N2", "name": "Mug"}) + "\n" + json.dumps({"sku": "L7", "deleted": True}) + "\n")
    got = load_delta(jsonl_delta, columns="id=sku,title=name")
    assert [lst.id for lst in got.upserts] == ["N2"] and got.deletions == ["L7"]
    jsonl_delta.write_text(json.dumps({"id": "L7", "deleted": True}) + "\n")
    with pytest.raises(CatalogError, match=r"dA.jsonl:1: id: a deletion row needs the listing id \(column 'sku'"):
        load_delta(jsonl_delta, columns="id=sku")


def wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def ids_of(client: TestClient, query: str, k: int = 5, **extra) -> list[str]:
    r = client.post("/search", json={"query": query, "k": k, **extra})
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"]]


def test_deny_hides_at_once_keeps_k_and_reaches_other_replicas(artifacts_copy: Path) -> None:
    from service.api.app import create_app
    from service.serving.settings import Settings

    settings = Settings(artifacts=artifacts_copy, reload_poll_s=0, admin_token="t0ken", denylist_poll_s=0.1,
                        warmup_queries=1)
    auth = {"Authorization": "Bearer t0ken"}
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        for c in (one, two):
            assert wait_for(lambda c=c: c.get("/readyz").status_code == 200, 60)
        before = ids_of(one, "gift")
        victim = before[0]
        r = one.post("/admin/deny", json={"ids": [victim]}, headers=auth)
        assert r.status_code == 200 and r.json()["denied"] == 1
        after = ids_of(one, "gift")  # this replica: at once
        assert victim not in after and len(after) == 5 and after[:4] == before[1:5]
        assert wait_for(lambda: victim not in ids_of(two, "gift"), 5)  # the other: within the poll interval
        assert victim not in ids_of(one, "gift", k=20, offset=0) and len(ids_of(one, "gift", k=20)) == 20
        cat = ListingStore(next((artifacts_copy / "versions").iterdir()) / "listings.sqlite")
        category = cat.get(cat.rows_of([victim]).tolist())[int(cat.rows_of([victim])[0])]["category"]
        if category:
            assert victim not in ids_of(one, "gift", k=10, filters={"category": [category]})
        assert one.post("/admin/deny", json={"ids": [victim]}).status_code == 401
        assert one.post("/admin/deny", json={"ids": ["a\nb"]}, headers=auth).status_code == 422
        assert one.post("/admin/deny", json={"ids": []}, headers=auth).status_code == 422
        # `service deny --remove` from an operator's machine: both replicas show it again
        assert main(["deny", "--artifacts", str(artifacts_copy), "--remove", victim]) == 0
        assert wait_for(lambda: ids_of(one, "gift") == before and ids_of(two, "gift") == before, 5)
        assert main(["deny", "--artifacts", str(artifacts_copy), victim]) == 0
        assert wait_for(lambda: victim not in ids_of(two, "gift"), 5)


def test_deny_names_unknown_ids_and_gc_needs_one_version(artifacts_copy: Path, capsys) -> None:
    store = ListingStore(ArtifactStore(artifacts_copy).version_dir(ArtifactStore(artifacts_copy).current_version())
                         / "listings.sqlite")
    known = store.ids()[0]
    assert main(["deny", "--artifacts", str(artifacts_copy), known, "L-typo"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["unknown"] == 1 and "1 id(s) not in the current version: L-typo" in out.err
    assert denylist.read_ids(denylist.denylist_path(artifacts_copy)) == {known, "L-typo"}  # denied all the same
    with pytest.raises(SystemExit) as e:
        main(["gc", "--artifacts", str(artifacts_copy), "--keep-versions", "0"])
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err
    assert main(["gc", "--artifacts", str(artifacts_copy), "--keep-versions", "1"]) == 0
