"""Versioned artifacts: atomic publish, checksum verification, roll back, retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from index.artifacts import ArtifactError, ArtifactStore


def make_version(store: ArtifactStore, name: str, payload: bytes = b"x") -> Path:
    with store.stage(name) as staged:
        (staged.path / "data.bin").write_bytes(payload)
        return store.commit(staged, {"created": name})


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
