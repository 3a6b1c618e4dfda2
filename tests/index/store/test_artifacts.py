"""Versioned artifacts: atomic publish, checksum verification, roll back, retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from index.store.artifacts import ArtifactError, ArtifactStore
from index.store.manifest import Manifest


def make_version(store: ArtifactStore, name: str, payload: bytes = b"x") -> Path:
    with store.stage(name) as staged:
        (staged.path / "data.bin").write_bytes(payload)
        return store.commit(staged, Manifest(created=name))


def test_commit_publish_and_roll_back(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    assert store.current_version() is None
    make_version(store, "v1")
    make_version(store, "v2", b"y")
    assert store.list_versions() == ["v1", "v2"]
    store.publish("v2")
    assert store.current_version() == "v2"
    store.publish("v1")  # roll back
    assert store.current_version() == "v1"
    assert store.manifest("v1")["files"]["data.bin"]
    assert not list((tmp_path / "a").glob(".current*.tmp"))


def test_checksum_mismatch_and_missing_files_are_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    path = make_version(store, "v1")
    store.publish("v1")
    (path / "data.bin").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        store.verify("v1")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        store.publish("v1")
    (path / "data.bin").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        store.verify("v1")
    with pytest.raises(ArtifactError, match="no such artifact version"):
        store.verify("v9")
    with pytest.raises(ArtifactError, match="not a valid version name"):
        store.version_dir("../etc")


def test_failed_staging_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError), store.stage("v1") as staged:
        (staged.path / "half.bin").write_bytes(b"half")
        raise RuntimeError("killed halfway")
    assert store.list_versions() == [] and list(store.staging_dir.iterdir()) == []
    make_version(store, "v1")
    with pytest.raises(ArtifactError, match="exists already"), store.stage("v1"):
        pass


def test_retain_keeps_newest_and_current(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    for v in ("v1", "v2", "v3", "v4"):
        make_version(store, v)
    store.publish("v1")
    assert store.retain(2) == ["v2"]
    assert store.list_versions() == ["v1", "v3", "v4"]


def test_clean_staging_removes_only_old_debris(tmp_path: Path) -> None:
    import os
    import time

    store = ArtifactStore(tmp_path)
    old, fresh = store.staging_dir / "v1.dead", store.staging_dir / "v2.writing"
    old.mkdir(parents=True)
    fresh.mkdir()
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert store.clean_staging(3600) == ["v1.dead"]
    assert [p.name for p in store.staging_dir.iterdir()] == ["v2.writing"]


def test_rebuild_reuses_ivf_training_and_retrains_after_growth() -> None:
    import faiss
    import numpy as np

    from index.build import build_index, rebuild_index

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    first = build_index(x, "IVF16,Flat")
    again = rebuild_index(first.index, "IVF16,Flat", x[:1500])
    assert again.ntotal == 1500
    c1 = faiss.extract_index_ivf(first.index).quantizer.reconstruct_n(0, 16)
    c2 = faiss.extract_index_ivf(again.index).quantizer.reconstruct_n(0, 16)
    np.testing.assert_array_equal(c1, c2)  # the trained coarse quantiser was kept
    assert first.ntotal == 2000  # the previous index is untouched
    grown = rebuild_index(first.index, "IVF16,Flat", np.vstack([x] * 3))
    assert grown.ntotal == 6000
    flat = rebuild_index(build_index(x, "Flat").index, "Flat", x[:10])
    assert flat.ntotal == 10
    with pytest.raises(ValueError, match="expected"):
        rebuild_index(first.index, "IVF16,Flat", x[:, :8])


def test_listing_store_rows_of_and_records(tmp_path: Path) -> None:
    from index.store.listings import ListingRecord, ListingStore, write_listings

    recs = [ListingRecord(i, f"L{i}", f"title {i}", None, "mug" if i % 2 else None, float(i), {"c": str(i)})
            for i in range(2000)]
    write_listings(tmp_path / "l.sqlite", recs)
    store = ListingStore(tmp_path / "l.sqlite")
    assert store.rows_of(["L7", "L3", "nope", "L1999"]).tolist() == [3, 7, 1999]
    assert len(store.rows_of([f"L{i}" for i in range(1500)])) == 1500  # beyond SQLite's parameter limit
    assert store.rows_of([]).tolist() == []
    assert list(store.records()) == recs
