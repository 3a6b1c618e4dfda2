from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import wait_ready

from service.api.app import create_app
from service.serving.settings import Settings


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
