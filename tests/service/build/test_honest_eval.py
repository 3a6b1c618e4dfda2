"""Evaluation cannot flatter itself: judged queries that also occur in the training interactions
(compared as the query cache compares queries) are counted in the build report and left out of
the metrics; the ANN parameters are tuned on one part of the held-out queries and the ANN recall
the gate reads is measured on the other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index.tune import measure_recall, split_queries
from service.build.pipeline import BuildOptions, evaluate_stage, gate, index_stage, load_inputs
from service.cli import main


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def small_inputs(tmp_path: Path, judged: list[str]) -> BuildOptions:
    catalog = write_jsonl(tmp_path / "catalog.jsonl", [{"id": f"L{i}", "title": f"item {i}"} for i in range(4)])
    inter = write_jsonl(tmp_path / "interactions.jsonl", [{"query": "Red  Mug", "item_id": "L0"},
                                                         {"query": "blue scarf", "item_id": "L1"}])
    judg = write_jsonl(tmp_path / "judgments.jsonl",
                       [{"query": q, "item_id": f"L{i % 4}", "relevance": 2} for i, q in enumerate(judged)]
                       + [{"query": q, "item_id": "L3", "relevance": 0} for q in judged])
    return BuildOptions(catalog=catalog, artifacts=tmp_path / "art", interactions=inter, judgments=judg)


def test_judged_queries_seen_in_training_are_counted_and_left_out(tmp_path: Path) -> None:
    inputs = load_inputs(small_inputs(tmp_path, ["red mug", "BLUE  Scarf", "green lamp"]))
    assert inputs.judgments is not None and inputs.judgments.queries == ["green lamp"]
    seen = inputs.reports["judgments"]["in_training"]
    assert seen["queries"] == 2 and seen["of"] == 3 and seen["excluded"] is True
    assert set(seen["examples"]) == {"red mug", "BLUE Scarf"}


def test_every_judged_query_in_training_measures_nothing_and_fails_the_gate(tmp_path: Path) -> None:
    opts = small_inputs(tmp_path, ["red mug"])
    inputs = load_inputs(opts)
    vectors = np.eye(4, 8, dtype=np.float32)  # (n, d)
    built = index_stage(vectors, opts, np.eye(2, 8, dtype=np.float32), "judgments")
    metrics = evaluate_stage(built, vectors, ["L0", "L1", "L2", "L3"], lambda qs: np.zeros((len(qs), 8)),
                             inputs.judgments, opts)
    assert metrics["n_queries"] == 0 and metrics["recall@100"] != metrics["recall@100"]  # NaN
    assert any("recall@100 is NaN" in f for f in gate(metrics, opts))


@pytest.mark.slow
def test_build_report_counts_training_queries_and_metrics_exclude_them(
        tiny_build, tiny_sample: Path, tmp_path: Path, capsys) -> None:
    rows = [json.loads(line) for line in (tiny_sample / "judgments.jsonl").read_text().splitlines()]
    trained = [json.loads(line) for line in (tiny_sample / "interactions.jsonl").read_text().splitlines()[:3]]
    leaked = [{"query": "  " + t["query"].upper(), "item_id": t["item_id"], "relevance": 3} for t in trained]
    judgments = write_jsonl(tmp_path / "judgments.jsonl", rows + leaked)
    art = tmp_path / "store"
    rc = main(["build-index", "--catalog", str(tiny_sample / "catalog.jsonl"),
               "--interactions", str(tiny_sample / "interactions.jsonl"), "--judgments", str(judgments),
               "--artifacts", str(art), "--epochs", "0", "--device", "cpu", "--no-progress", "--version", "v",
               "--index-key", "IVF4,Flat", "--image-cache", str(tiny_build.path.parent.parent.parent / "image-cache")])
    assert rc == 0
    n_leaked = len({t["query"] for t in trained})
    report = json.loads((art / "versions" / "v" / "report.json").read_text())
    assert report["inputs"]["judgments"]["in_training"]["queries"] == n_leaked
    manifest = json.loads((art / "versions" / "v" / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert metrics["judged_queries_in_training_excluded"] == n_leaked
    assert metrics["n_queries"] + metrics["n_skipped"] == len({r["query"] for r in rows})
    # tuned on one part of the held-out queries, the gated recall measured on the other
    tuning = manifest["index_tuning"]
    n_held_out = len(np.load(art / "versions" / "v" / "tune_queries.npy"))
    assert tuning["n_queries"] + tuning["check"]["n_queries"] == n_held_out and tuning["check"]["n_queries"] > 0
    assert metrics["ann_recall@10"] == tuning["check"]["recall"]
    assert metrics["tune_ann_recall@10"] == tuning["recall"]


def test_gated_ann_recall_is_measured_on_queries_not_tuned_on(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(16, 16))
    x = centres[rng.integers(0, 16, 2000)] + 0.5 * rng.normal(size=(2000, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # (n, d)
    q = centres[rng.integers(0, 16, 200)] + 0.5 * rng.normal(size=(200, 16))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)  # (Q, d)
    opts = BuildOptions(catalog=Path("c"), artifacts=tmp_path, index_key="IVF32,Flat", target_ann_recall=0.9, seed=3)
    built = index_stage(x, opts, q, "judgments")
    metrics = evaluate_stage(built, x, [str(i) for i in range(len(x))], lambda qs: q, None, opts)
    tune_rows, check_rows = split_queries(len(q), seed=3)
    assert not set(tune_rows) & set(check_rows) and len(tune_rows) + len(check_rows) == len(q)
    assert built.tuning["n_queries"] == len(tune_rows) and built.tuning["check"]["n_queries"] == len(check_rows)
    assert metrics["ann_recall@10"] == measure_recall(built.index, x, q[check_rows], 10)
    assert metrics["tune_ann_recall@10"] == measure_recall(built.index, x, q[tune_rows], 10) >= 0.9
