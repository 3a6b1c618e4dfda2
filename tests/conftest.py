"""Shared fixtures: a tiny generated sample catalog and one artifact built from it (session-wide,
so the whole suite trains once). Offline by construction: hub libraries are set offline before
anything imports them, and pytest-socket (pyproject addopts) blocks every non-loopback socket."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


def build_tiny(sample: Path, artifacts: Path, **overrides):
    from service.build.pipeline import build_index, build_options

    kw = dict(
        catalog=sample / "catalog.jsonl", artifacts=artifacts, interactions=sample / "interactions.jsonl",
        judgments=sample / "judgments.jsonl", objective="ft", epochs=1, batch_size=64, device="cpu",
        progress=False, image_cache=artifacts.parent / "image-cache",
    )
    kw.update(overrides)
    return build_index(build_options(**kw))


@pytest.fixture(scope="session")
def tiny_builder():
    """The build function, for tests that need their own variant of the tiny build."""
    return build_tiny


@pytest.fixture(scope="session")
def tiny_build(tiny_sample: Path, tmp_path_factory: pytest.TempPathFactory):
    """A published artifact (1 epoch of `ft`) over the tiny sample; treat it as read-only."""
    artifacts = tmp_path_factory.mktemp("artifacts") / "store"
    return build_tiny(tiny_sample, artifacts, epochs=2)
