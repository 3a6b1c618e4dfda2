"""The manifest schema (index/store/manifest.py): what every writer fills and commit stores."""

from __future__ import annotations

import json

import pytest

from index.store.artifacts import ArtifactStore
from index.store.manifest import Manifest


def test_a_built_version_holds_only_schema_keys_and_round_trips(tiny_build) -> None:
    stored = ArtifactStore(tiny_build.path.parents[1]).manifest(tiny_build.version)
    again = Manifest.from_dict(stored).to_dict()
    assert again == {k: v for k, v in stored.items() if k not in ("schema_version", "version", "files")}
    assert stored["n_items"] > 0 and stored["gate"]["passed"] and stored["model_digest"]


def test_unknown_keys_are_refused_and_optional_ones_left_out(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown keys \['typo_key'\]"):
        Manifest.from_dict({"objective": "ft", "typo_key": 1})
    store = ArtifactStore(tmp_path)
    with store.stage("v1") as staged:
        (staged.path / "x.bin").write_bytes(b"x")
        store.commit(staged, Manifest(objective="ft", n_items=1))
    data = json.loads((tmp_path / "versions" / "v1" / "manifest.json").read_text())
    assert data["objective"] == "ft" and data["version"] == "v1" and set(data["files"]) == {"x.bin"}
    assert "run" not in data and "lexical" not in data and data["image_backbone_digest"] is None
