"""Verification on load refuses a corrupt or mismatched version, with or without checksums, and
the engine keeps serving the previous one: truncated index, corrupt SQLite, a dimension mismatch,
a manifest naming another version or another model, an unknown schema; `service gc` retention."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest
from helpers import clone_version

from index.store.artifacts import MANIFEST, ArtifactError, ArtifactStore, sha256_file
from service.cli import main
from service.serving.engine import Engine, load_version
from service.serving.settings import Settings


def version_dir(artifacts: Path) -> Path:
    return ArtifactStore(artifacts).version_dir(ArtifactStore(artifacts).current_version())


def rewrite_manifest(folder: Path, **changes) -> None:
    """Edit the manifest and re-checksum the files, as a buggy or foreign build would write it."""
    m = json.loads((folder / MANIFEST).read_text())
    m.update(changes)
    m["files"] = {name: sha256_file(folder / name) for name in m["files"]}
    (folder / MANIFEST).write_text(json.dumps(m))


def truncate_index(folder: Path) -> None:
    data = (folder / "index.faiss").read_bytes()
    (folder / "index.faiss").write_bytes(data[: len(data) // 2])


def corrupt_sqlite(folder: Path) -> None:
    (folder / "listings.sqlite").write_bytes(b"not a database" * 100)


def other_dim_index(folder: Path) -> None:
    n = json.loads((folder / MANIFEST).read_text())["n_items"]
    index = faiss.IndexFlatIP(128)
    index.add(np.random.default_rng(0).normal(size=(n, 128)).astype(np.float32))
    faiss.write_index(index, str(folder / "index.faiss"))


def fewer_vectors(folder: Path) -> None:
    v = np.load(folder / "vectors.npy")
    np.save(folder / "vectors.npy", v[:-1])


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (damage, error with checksums on, error with checksums off)
    "truncated index": (truncate_index, "checksum mismatch", "index.faiss: not a readable faiss index"),
    "corrupt sqlite": (corrupt_sqlite, "checksum mismatch", r"unreadable artifact \(DatabaseError"),
    "index of another dim": (other_dim_index, "checksum mismatch", "index dim is 128, the manifest says 256"),
    "one vector short": (fewer_vectors, "checksum mismatch", "vectors.npy rows is"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
@pytest.mark.parametrize("verify", [True, False])
def test_corrupt_files_are_refused(artifacts_copy: Path, name: str, verify: bool) -> None:
    damage, with_sums, without_sums = CORRUPTIONS[name]
    damage(version_dir(artifacts_copy))
    with pytest.raises(ArtifactError, match=with_sums if verify else without_sums):
        load_version(Settings(artifacts=artifacts_copy, verify_checksums=verify, encoder_backend="torch"))


@pytest.mark.parametrize(("changes", "message"), [
    ({"dim": 128}, "index dim is 256, the manifest says 128"),
    ({"n_items": 7}, "index vectors is 120, the manifest says 7"),
    ({"version": "someone-else"}, "the manifest names version 'someone-else'"),
    ({"model_digest": "0" * 64}, "not the model the manifest's model_digest names"),
    ({"schema_version": 99}, "schema_version 99 is not 1"),
])
def test_mismatched_manifests_are_refused(artifacts_copy: Path, changes: dict, message: str) -> None:
    rewrite_manifest(version_dir(artifacts_copy), **changes)  # checksums pass: the cross-checks must catch it
    with pytest.raises(ArtifactError, match=message):
        load_version(Settings(artifacts=artifacts_copy, encoder_backend="torch"))


def test_engine_keeps_serving_when_the_next_version_is_corrupt(artifacts_copy: Path, tiny_build) -> None:
    store = ArtifactStore(artifacts_copy)
    clone_version(store, tiny_build.version, "broken")
    truncate_index(store.version_dir("broken"))
    engine = Engine(Settings(artifacts=artifacts_copy, encoder_backend="torch", warmup_queries=1))
    engine.load()
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        engine.load("broken")
    assert engine.current.version == tiny_build.version and "checksum mismatch" in engine.last_reload_error
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        store.publish("broken")  # publishing verifies too: `current` never names a corrupt version
    assert store.current_version() == tiny_build.version


def test_gc_keeps_newest_and_current(artifacts_copy: Path, tiny_build) -> None:
    store = ArtifactStore(artifacts_copy)
    names = [f"v{i}" for i in range(4)]
    for name in names:
        clone_version(store, tiny_build.version, name)
    (store.staging_dir / "dead.1234").mkdir(parents=True)
    assert main(["gc", "--artifacts", str(artifacts_copy), "--keep-versions", "2", "--staging-age-s", "0"]) == 0
    assert store.list_versions() == sorted([tiny_build.version, "v2", "v3"])  # current is never deleted
    assert list(store.staging_dir.iterdir()) == []
