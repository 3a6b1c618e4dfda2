"""Fixtures of the hardening tests: one app over a private copy of the tiny build (admin on, small
limits, result cache off so every request reaches the encoder and the index)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hardening_helpers import LIMITS, TOKEN
from helpers import copy_artifacts, wait_ready

from service.api.app import create_app
from service.serving.settings import Settings


@pytest.fixture(scope="module")
def hard_artifacts(tiny_build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_artifacts(tiny_build, tmp_path_factory.mktemp("hard") / "artifacts")


@pytest.fixture(scope="module")
def hard_client(hard_artifacts: Path) -> Iterator[TestClient]:
    settings = Settings(artifacts=hard_artifacts, reload_poll_s=0, denylist_poll_s=0, admin_token=TOKEN,
                        cache_size=0, warmup_queries=1, encoder_backend="torch",
                        events_log=hard_artifacts.parent / "events.jsonl", **LIMITS)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c
