"""`service build-index --trainable-layers N`, as a user runs it: the model fine-tunes N top layers
and the version records it; an N the encoder cannot take is refused with the option's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from index.store.artifacts import ArtifactStore
from service.cli import main


def _argv(tiny_sample: Path, tiny_build, art: Path) -> list[str]:
    cache = tiny_build.path.parent.parent.parent / "image-cache"  # the session build's features
    return ["build-index", "--catalog", str(tiny_sample / "catalog.jsonl"), "--artifacts", str(art),
            "--interactions", str(tiny_sample / "interactions.jsonl"), "--batch-size", "64", "--device", "cpu",
            "--image-cache", str(cache), "--no-progress", "--no-publish", "--view-vectors", "off", "--epochs", "1"]


@pytest.mark.slow
def test_trainable_layers_reach_the_model_and_the_manifest(tiny_sample: Path, tiny_build, tmp_path: Path,
                                                          capsys) -> None:
    art = tmp_path / "a"
    assert main([*_argv(tiny_sample, tiny_build, art), "--trainable-layers", "2", "--version", "two"]) == 0
    manifest = ArtifactStore(art).manifest("two")
    assert manifest["model_config"]["text"]["trainable_layers"] == 2
    assert ArtifactStore(tiny_build.path.parents[1]).manifest(tiny_build.version)["model_config"]["text"][
        "trainable_layers"] == 1  # the default
    capsys.readouterr()
    assert main([*_argv(tiny_sample, tiny_build, art), "--trainable-layers", "7", "--version", "seven"]) == 2
    err = capsys.readouterr().err
    assert "trainable_layers (--trainable-layers): 7 is not within [0, 6]" in err, err
    assert "seven" not in ArtifactStore(art).list_versions()
