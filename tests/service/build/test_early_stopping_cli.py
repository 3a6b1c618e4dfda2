"""`service build-index --patience N [--validation-judgments F] --hard-negatives K`, through the
CLI as a user types it: validation queries never train, every epoch is scored, the run stops
when validation stops improving and the version holds the best epoch's model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from index.store.artifacts import ArtifactStore
from model.data.interactions import load_interactions
from model.train.validation import holdout_queries, normalise
from service.cli import main


def _common(tiny_sample: Path, tiny_build, art: Path) -> list[str]:
    cache = tiny_build.path.parent.parent.parent / "image-cache"  # the session build's features
    return ["build-index", "--catalog", str(tiny_sample / "catalog.jsonl"), "--artifacts", str(art),
            "--interactions", str(tiny_sample / "interactions.jsonl"), "--batch-size", "64", "--device", "cpu",
            "--image-cache", str(cache), "--no-progress", "--no-publish", "--view-vectors", "off"]


def _ids(tiny_sample: Path) -> set[str]:
    return {json.loads(line)["id"] for line in (tiny_sample / "catalog.jsonl").read_text().splitlines()}


@pytest.mark.slow
def test_held_out_queries_stop_the_run_and_the_best_epoch_is_kept(tiny_sample: Path, tiny_build, tmp_path: Path) -> None:
    art = tmp_path / "art"
    argv = _common(tiny_sample, tiny_build, art) + ["--epochs", "4", "--patience", "1", "--validation-fraction",
                                                   "0.25", "--hard-negatives", "1", "--version", "es"]
    assert main(argv) == 0
    store = ArtifactStore(art)
    report = json.loads((store.version_dir("es") / "report.json").read_text())
    interactions, _ = load_interactions(tiny_sample / "interactions.jsonl", _ids(tiny_sample))
    train, vs = holdout_queries(interactions, 0.25)
    assert report["inputs"]["validation"]["queries"] == len(vs) >= 20
    assert report["inputs"]["validation"]["interactions_held_out"] == len(interactions) - len(train) > 0
    assert report["training"]["pairs"] == len(train)  # the held-out queries never trained
    hist = report["training"]["history"]
    es = hist["early_stopping"]
    vals = [e["val_ndcg@10"] for e in hist["epochs"]]
    assert es["epochs_run"] == len(vals) and 1 <= len(vals) <= 4
    assert es["best"] == max(vals) and vals[es["best_epoch"] - 1] == es["best"]
    # (that the weights kept are the best epoch's: tests/model/train/test_early_stopping.py, scripted)
    assert all(e["mined_negatives"] > 0 for e in hist["epochs"])
    cfg = store.manifest("es")["train_config"]
    assert cfg["patience"] == 1 and cfg["hard_negatives"] == 1


@pytest.mark.slow
def test_a_validation_judgments_file_is_scored_and_its_queries_leave_training(tiny_sample: Path, tiny_build,
                                                                             tmp_path: Path) -> None:
    interactions, _ = load_interactions(tiny_sample / "interactions.jsonl", _ids(tiny_sample))
    queries = sorted({it.query for it in interactions})[:30]
    judged = tmp_path / "val.jsonl"
    judged.write_text("".join(json.dumps({"query": it.query.upper(), "item_id": it.item_id, "relevance": 2})
                              + "\n" for it in interactions if it.query in queries))
    art = tmp_path / "art"
    argv = _common(tiny_sample, tiny_build, art) + ["--epochs", "1", "--patience", "1", "--validation-judgments",
                                                   str(judged), "--min-relevant", "2", "--version", "vj"]
    assert main(argv) == 0
    report = json.loads((ArtifactStore(art).version_dir("vj") / "report.json").read_text())
    left = [it for it in interactions if normalise(it.query) not in {normalise(q) for q in queries}]
    assert report["inputs"]["validation"]["queries"] == 30
    assert report["training"]["pairs"] == len(left)  # the same queries, other case: out of training
    assert report["training"]["history"]["epochs"][0]["val_queries"] == 30


@pytest.mark.parametrize("extra, message", [
    (["--validation-fraction", "0.01"], "early stopping needs at least 20"),
    (["--validation-fraction", "1.5"], "fraction"),
])
def test_too_little_validation_is_refused_with_a_reason(tiny_sample: Path, tiny_build, tmp_path: Path, capsys,
                                                        extra: list[str], message: str) -> None:
    argv = _common(tiny_sample, tiny_build, tmp_path / "art") + ["--epochs", "1", "--patience", "1", *extra]
    assert main(argv) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "art" / "versions").exists() or not list((tmp_path / "art" / "versions").iterdir())


def test_patience_without_any_shopper_query_is_refused(tiny_sample: Path, tiny_build, tmp_path: Path, capsys) -> None:
    argv = [a for a in _common(tiny_sample, tiny_build, tmp_path / "art")]
    i = argv.index("--interactions")
    del argv[i:i + 2]
    assert main(argv + ["--epochs", "1", "--patience", "1"]) != 0
    assert "early stopping needs validation queries" in capsys.readouterr().err


@pytest.mark.slow
def test_validation_judgments_without_interactions_validate_a_pseudo_query_build(tiny_sample: Path, tiny_build,
                                                                               tmp_path: Path) -> None:
    interactions, _ = load_interactions(tiny_sample / "interactions.jsonl", _ids(tiny_sample))
    judged = tmp_path / "val.jsonl"
    judged.write_text("".join(json.dumps({"query": it.query, "item_id": it.item_id, "relevance": 1}) + "\n"
                              for it in interactions[:60]))
    argv = [a for a in _common(tiny_sample, tiny_build, tmp_path / "art")]
    i = argv.index("--interactions")
    del argv[i:i + 2]
    assert main(argv + ["--epochs", "1", "--patience", "1", "--validation-judgments", str(judged),
                        "--version", "pq"]) == 0
    report = json.loads((ArtifactStore(tmp_path / "art").version_dir("pq") / "report.json").read_text())
    assert report["training"]["self_supervised"] is True
    assert report["training"]["history"]["epochs"][0]["val_queries"] == report["inputs"]["validation"]["queries"] >= 20


def test_validation_on_the_gate_judgments_is_refused(tiny_sample: Path, tiny_build, tmp_path: Path, capsys) -> None:
    j = str(tiny_sample / "judgments.jsonl")
    argv = _common(tiny_sample, tiny_build, tmp_path / "art") + ["--judgments", j, "--validation-judgments", j,
                                                                "--patience", "1", "--epochs", "1"]
    assert main(argv) != 0
    assert "the same file as --judgments" in capsys.readouterr().err
