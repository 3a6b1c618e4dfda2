from __future__ import annotations

from collections.abc import Iterator

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
