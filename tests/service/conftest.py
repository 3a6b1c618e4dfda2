from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index.artifacts import MANIFEST, ArtifactStore
from service.app import create_app
from service.settings import Settings


def wait_ready(client: TestClient, timeout: float = 60.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = client.get("/readyz")
        if r.status_code == 200:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout}s: {client.get('/readyz').json()}")


def clone_version(store: ArtifactStore, src: str, name: str) -> Path:
    """Another committed version with the same files (as a rebuild of the same catalog would be)."""
    folder = store.version_dir(src)
    manifest = store.manifest(src)
    with store.stage(name) as staged:
        for p in folder.iterdir():
            if p.name != MANIFEST:
                (staged.path / p.name).write_bytes(p.read_bytes())
        return store.commit(staged, {k: v for k, v in manifest.items() if k not in ("schema_version", "version", "files")})


@pytest.fixture(scope="module")
def client(tiny_build) -> Iterator[TestClient]:
    settings = Settings(artifacts=tiny_build.path.parent.parent, reload_poll_s=0, admin_token="s3cret",
                        image_base_url="https://cdn.example/img", max_k=50, max_query_chars=64)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


@pytest.fixture
def artifacts_copy(tiny_build, tmp_path) -> Path:
    """A private, writable copy of the tiny build's artifact folder (its version and `current`),
    for tests that publish, deny or corrupt things."""
    import shutil

    src = tiny_build.path.parent.parent
    dst = tmp_path / "artifacts"
    shutil.copytree(src / "versions" / tiny_build.version, dst / "versions" / tiny_build.version)
    shutil.copyfile(src / "current", dst / "current")
    return dst
