"""The publish gate through the command line: below a threshold, `service build-index` writes its
report and the unpublished version, exits non-zero, and leaves `current` exactly as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from index.store.artifacts import ArtifactStore
from service.cli import main


@pytest.mark.slow
def test_build_below_threshold_exits_non_zero_and_keeps_current(
        tiny_build, tiny_sample: Path, tmp_path: Path, capsys) -> None:
    flag = "--min-recall-at-100"  # (--min-ann-recall: tests/service/build/test_stages.py)
    art = tmp_path / "store"
    shutil.copytree(tiny_build.path.parent.parent, art)  # a store whose `current` is the tiny build
    store = ArtifactStore(art)
    before = store.current_version()
    current_link = (art / "current").read_bytes() if (art / "current").is_file() else None
    assert before == tiny_build.version

    rc = main([
        "build-index", "--catalog", str(tiny_sample / "catalog.jsonl"),
        "--interactions", str(tiny_sample / "interactions.jsonl"),
        "--judgments", str(tiny_sample / "judgments.jsonl"), "--artifacts", str(art),
        "--epochs", "0", "--device", "cpu", "--no-progress", "--version", "gated",
        "--image-cache", str(tiny_build.path.parent.parent.parent / "image-cache"),
        flag, "1.01",  # no build can reach a recall above 1
    ])

    assert rc != 0
    err = capsys.readouterr().err
    assert "NOT published" in err and flag.lstrip("-") in err
    assert store.current_version() == before
    if current_link is not None:
        assert (art / "current").read_bytes() == current_link
    # The unpublished version is complete and says why it was held back.
    manifest = json.loads((art / "versions" / "gated" / "manifest.json").read_text())
    assert manifest["gate"]["passed"] is False and manifest["gate"]["failures"]
    assert (art / "versions" / "gated" / "report.json").is_file()
