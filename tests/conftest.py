"""Shared fixtures: a tiny generated sample catalog and one artifact built from it (session-wide,
so the whole suite trains once). Offline by construction: hub libraries are set offline before
anything imports them, and pytest-socket (pyproject addopts) blocks every non-loopback socket."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import build_tiny, copy_artifacts

from service.offline import enforce_offline

enforce_offline()
os.environ.setdefault("OMP_NUM_THREADS", "2")

TINY_ITEMS = 120


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.sample.catalog import generate

    out = tmp_path_factory.mktemp("sample")
    generate(out, n_items=TINY_ITEMS, seed=7)
    return out


@pytest.fixture(scope="session")
def tiny_builder():
    """The build function, for tests that need their own variant of the tiny build."""
    return build_tiny


@pytest.fixture(scope="session")
def tiny_build(tiny_sample: Path, tmp_path_factory: pytest.TempPathFactory):
    """A published artifact (2 epochs of `ft`) over the tiny sample; treat it as read-only."""
    artifacts = tmp_path_factory.mktemp("artifacts") / "store"
    return build_tiny(tiny_sample, artifacts, epochs=2)


@pytest.fixture
def artifacts_copy(tiny_build, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny build's artifact folder (its version and `current`),
    for tests that publish, deny or corrupt things."""
    return copy_artifacts(tiny_build, tmp_path / "artifacts")
