"""The learned per-view-type fusion weights reach the version manifest (`view_weights`) of every
command that writes a version (build-index, index, update-index) and `service versions` prints
them; all through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from index.store.artifacts import ArtifactStore
from model.checkpoint import load_model
from model.config import VIEW_TYPES
from model.view_fusion import view_weights
from service.cli import main


def _weights_of(store: ArtifactStore, version: str) -> dict[str, float]:
    model = load_model(store.version_dir(version) / "model.safetensors", "cpu")
    return view_weights(model.fusion, model.cfg.index_views)


@pytest.fixture(scope="module")
def built(tiny_sample: Path, tiny_build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    art = tmp_path_factory.mktemp("vw") / "art"
    cache = tiny_build.path.parent.parent.parent / "image-cache"  # the session build's features
    common = ["--catalog", str(tiny_sample / "catalog.jsonl"), "--artifacts", str(art),
              "--interactions", str(tiny_sample / "interactions.jsonl"), "--batch-size", "64",
              "--device", "cpu", "--image-cache", str(cache), "--no-progress"]
    assert main(["build-index", *common, "--epochs", "1", "--version", "b1"]) == 0
    assert main(["train", *common, "--epochs", "0", "--run", "r0"]) == 0
    assert main(["embed", "--artifacts", str(art), "--run", "r0", "--no-progress"]) == 0
    assert main(["index", "--artifacts", str(art), "--run", "r0", "--version", "i1"]) == 0
    first = json.loads((tiny_sample / "catalog.jsonl").read_text().splitlines()[0])["id"]
    (art.parent / "delete.txt").write_text(first + "\n")
    assert main(["update-index", "--artifacts", str(art), "--base", "b1", "--delete-ids",
                 str(art.parent / "delete.txt"), "--version", "u1", "--no-publish", "--device", "cpu"]) == 0
    return art


@pytest.mark.slow
def test_every_written_version_records_its_models_view_weights(built: Path) -> None:
    store = ArtifactStore(built)
    for version in ("b1", "i1", "u1"):
        got = store.manifest(version)["view_weights"]
        assert set(got) == set(VIEW_TYPES), version  # `ft` indexes every view type
        assert abs(sum(got.values()) - 1.0) < 1e-3
        assert got == _weights_of(store, version)
    untrained = store.manifest("i1")["view_weights"]  # 0 epochs: the prior alone (log 2 on primaries)
    assert untrained["title"] == untrained["image"] and untrained["description"] == untrained["tags"]
    assert abs(untrained["title"] / untrained["description"] - 2.0) < 1e-2
    trained = store.manifest("b1")["view_weights"]
    assert max(abs(trained[t] - untrained[t]) for t in VIEW_TYPES) > 1e-3  # they learned
    assert store.manifest("u1")["view_weights"] == trained  # an update reuses the parent's towers


def test_versions_command_prints_the_weights(built: Path, capsys) -> None:
    assert main(["versions", "--artifacts", str(built)]) == 0
    lines = {line[2:].split()[0]: line for line in capsys.readouterr().out.splitlines()}  # "* v" or "  v"
    store = ArtifactStore(built)
    for version in ("b1", "i1", "u1"):
        w = store.manifest(version)["view_weights"]
        shown = ",".join(f"{t}:{w[t]:.2f}" for t in sorted(w, key=lambda t: (-w[t], t)))  # heaviest first
        assert f"weights={shown}" in lines[version]


def test_versions_shows_date_current_mark_and_rounded_metrics(built: Path, capsys) -> None:
    assert main(["versions", "--artifacts", str(built)]) == 0
    out = capsys.readouterr().out.splitlines()
    store = ArtifactStore(built)
    current = store.current_version()
    rows = [line for line in out if line[2:].split()[0] in store.list_versions()]
    assert [line[0] for line in rows].count("*") == 1 and any(line.startswith(f"* {current} ") for line in rows)
    for line in rows:
        version = line[2:].split()[0]
        m = store.manifest(version)
        assert f"created={m['created']}" in line
        for key in ("recall@100", "ndcg@10"):
            value = m.get("metrics", {}).get(key)
            shown = f"{key}={value:.3f}" if isinstance(value, float) else f"{key}=n/a"
            assert shown in line, (shown, line)
        assert ("gate=passed" in line) == bool(m["gate"]["passed"])
