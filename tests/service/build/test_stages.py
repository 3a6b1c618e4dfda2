"""Build stages as commands: `train` once, `embed --shard i/n` by several workers with the SAME
model, `index` merges them. Two shards merged equal the one-process build (vectors allclose, same
search results); incomplete, mixed or foreign shards are refused. Untrained (epochs=0) so the
model is identical by construction and the test stays fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index.build import load_index
from index.store.artifacts import ArtifactStore
from service.build.stages import (
    StageError,
    embed_shard,
    index_run,
    merge_shards,
    open_run,
    parse_shard,
    shard_range,
    train_run,
)
from service.cli import main


def tiny_options(tiny_sample: Path, artifacts: Path, cache: Path, **kw):
    from service.build.pipeline import build_options

    base = dict(catalog=tiny_sample / "catalog.jsonl", artifacts=artifacts, interactions=tiny_sample / "interactions.jsonl",
                judgments=tiny_sample / "judgments.jsonl", objective="ft", epochs=0, batch_size=64, device="cpu",
                progress=False, image_cache=cache)
    return build_options(**{**base, **kw})


@pytest.fixture(scope="module")
def staged(tiny_sample: Path, tiny_build, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One-process build and train -> 2 shards -> index, over the same options (cache shared)."""
    from service.build.pipeline import build_index

    cache = tiny_build.path.parent.parent.parent / "image-cache"  # the session build's features
    root = tmp_path_factory.mktemp("stages")
    single = build_index(tiny_options(tiny_sample, root / "single", cache, version="one"))
    art = root / "art"
    run = train_run(tiny_options(tiny_sample, art, cache), "r1")
    embed_shard(art, "r1", 0, 2)
    assert main(["embed", "--artifacts", str(art), "--run", "r1", "--shard", "1/2", "--no-progress"]) == 0
    sharded = index_run(art, "r1", publish=True, version="two")
    return {"single": single, "run": run, "art": art, "sharded": sharded}


@pytest.mark.slow
def test_run_folder_holds_model_options_and_report(staged) -> None:
    run = staged["run"]
    assert {p.name for p in run.path.iterdir()} >= {"model.safetensors", "tokenizer.json", "options.json", "train.json"}
    info = json.loads((run.path / "options.json").read_text())
    assert info["catalog"]["sha256"] and info["catalog"]["listings"] == 120
    assert info["options"]["catalog"].endswith("catalog.jsonl") and info["options"]["epochs"] == 0
    assert "history" in json.loads((run.path / "train.json").read_text())["training"]


def test_two_shards_equal_the_one_process_build(staged) -> None:
    from safetensors.numpy import load_file

    single, sharded = staged["single"], staged["sharded"]
    a, b = load_file(single.path / "model.safetensors"), load_file(sharded.path / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)  # the same model
    assert sharded.manifest["model_digest"] == staged["run"].info["model_digest"]  # the run's file, copied
    merged, ids, metas = merge_shards(open_run(staged["art"], "r1"))
    assert [m["rows"] for m in metas] == [[0, 60], [60, 120]]
    one = np.load(single.path / "vectors.npy").astype(np.float32)
    np.testing.assert_allclose(merged, one, atol=2e-3)  # vectors.npy is fp16
    # the same index results, for the same (query-tower) vectors the build tuned with
    q = np.load(single.path / "tune_queries.npy").astype(np.float32)
    _, rows_one = load_index(str(single.path / "index.faiss")).search(q, 10)
    _, rows_two = load_index(str(sharded.path / "index.faiss")).search(q, 10)
    assert np.mean(rows_one == rows_two) > 0.99
    for key in ("n_items", "dim", "index_key", "index_params", "objective"):
        assert sharded.manifest[key] == single.manifest[key], key
    assert sharded.manifest["metrics"]["recall@10"] == pytest.approx(single.manifest["metrics"]["recall@10"], abs=0.02)
    assert sharded.manifest["run"] == {"name": "r1", "shards": 2, "world_size": 1}
    assert ArtifactStore(staged["art"]).current_version() == "two"
    ArtifactStore(staged["art"]).verify("two")


@pytest.mark.slow
def test_index_refuses_mixed_missing_and_foreign_shards(staged, tmp_path: Path) -> None:
    import shutil

    art = tmp_path / "art"
    shutil.copytree(staged["art"] / "runs", art / "runs")
    shards = art / "runs" / "r1" / "shards"
    embed_shard(art, "r1", 0, 1)
    with pytest.raises(StageError, match="different splits"):
        index_run(art, "r1", publish=False)
    for p in shards.glob("*-of-2.*"):
        p.unlink()
    one = index_run(art, "r1", publish=False, version="single-shard")  # a 1-shard run is complete
    np.testing.assert_array_equal(np.load(one.path / "vectors.npy"), np.load(staged["sharded"].path / "vectors.npy"))
    assert ArtifactStore(art).current_version() is None  # not published unless asked
    meta = json.loads((shards / "0-of-1.json").read_text())
    (shards / "0-of-1.json").write_text(json.dumps({**meta, "model_digest": "0" * 64}))
    with pytest.raises(StageError, match="embedded with model"):
        index_run(art, "r1", publish=False)
    (shards / "0-of-1.json").write_text(json.dumps(meta))
    np.save(shards / "0-of-1.npy", np.zeros((120, 256), np.float32))
    with pytest.raises(StageError, match="checksum mismatch"):
        index_run(art, "r1", publish=False)
    (shards / "0-of-1.json").unlink()  # an unfinished shard (no .json) does not count
    with pytest.raises(StageError, match="no finished shards"):
        index_run(art, "r1", publish=False)
    with pytest.raises(StageError, match="no such run"):
        open_run(art, "nope")


def test_shard_ranges_cover_the_catalog_once() -> None:
    for n_rows in (0, 1, 7, 120):
        for n in (1, 2, 3, 8):
            ranges = [shard_range(n_rows, i, n) for i in range(n)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n_rows
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(StageError, match="--shard"):
            parse_shard(bad)


@pytest.mark.slow
def test_index_step_tunes_with_held_out_queries_and_gates(staged) -> None:
    from service.build.pipeline import GateFailed

    art = staged["art"]
    res = index_run(art, "r1", publish=False, version="ivf", index_key="IVF4,Flat", target_ann_recall=0.9)
    m = res.manifest
    assert m["index_key"] == "IVF4,Flat" and set(m["index_params"]) == {"nprobe"}
    t = m["index_tuning"]
    assert t["queries"] == "judgments" and t["k"] == 10 and t["target"] == 0.9 and t["reached"]
    assert t["recall"] >= 0.9 and t["params"] == m["index_params"] and t["curve"]
    # the gated recall is measured on the held-out part of the queries, not on those tuned on
    assert m["metrics"]["ann_recall@10"] == t["check"]["recall"] >= 0.8 and t["check"]["n_queries"] > 0
    assert m["metrics"]["tune_ann_recall@10"] == t["recall"]
    assert (res.path / "tune_queries.npy").is_file() and not res.published
    with pytest.raises(GateFailed, match="min-ann-recall"):
        index_run(art, "r1", publish=True, version="gated", index_key="IVF4,Flat", min_ann_recall=1.01)
    assert ArtifactStore(art).current_version() == "two"  # the gate left `current` alone


def test_tuning_queries_prefer_judgments_then_logs_then_pseudo(tiny_sample: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from service.build.pipeline import load_inputs, tuning_queries

    inputs = load_inputs(tiny_options(tiny_sample, tmp_path, tmp_path / "cache"))
    texts, source = tuning_queries(inputs, 1000, 0)
    assert source == "judgments" and texts == inputs.judgments.queries
    texts, source = tuning_queries(replace(inputs, judgments=None), 5, 0)
    assert source == "interactions" and len(texts) == 5
    texts, source = tuning_queries(replace(inputs, judgments=None, interactions=[]), 50, 0)
    assert source == "pseudo" and 0 < len(texts) <= 50
    titles = {lst.title.lower() for lst in inputs.catalog.listings}
    assert all(t.split() and len(t.split()) <= 4 for t in texts) and not set(texts) <= titles  # not listings


def test_cli_train_and_index_pass_their_options(staged, tiny_sample: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import service.build.stages as stages

    seen = {}
    monkeypatch.setattr(stages, "train_run", lambda opts, run, **kw: seen.update(opts=opts, run=run) or staged["run"])
    assert main(["train", "--catalog", str(tiny_sample / "catalog.jsonl"), "--artifacts", str(tmp_path), "--run", "x",
                 "--epochs", "3", "--memory-budget-gb", "1.5", "--target-ann-recall", "0.9", "--served-k", "20"]) == 0
    opts = seen["opts"]
    assert seen["run"] == "x" and opts.epochs == 3 and opts.memory_budget_gb == 1.5
    assert opts.target_ann_recall == 0.9 and opts.served_k == 20
    capsys.readouterr()
    assert main(["index", "--artifacts", str(staged["art"]), "--run", "r1", "--version", "cli-flat", "--index-key", "Flat"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == "cli-flat" and out["published"] is False and out["index_key"] == "Flat"
    assert main(["index", "--artifacts", str(staged["art"]), "--run", "nope"]) == 2  # one clear error line
