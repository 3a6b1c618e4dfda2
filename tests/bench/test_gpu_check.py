"""bench/gpu_check.py cannot rot: its `--device cpu --smoke` mode runs here (small sizes, no pytest
run, no server), writes the JSON and the markdown table, and its faiss-less search path (the GPU
machine has no faiss) agrees with exact search (issue 15, item 8)."""

from __future__ import annotations

import json

import numpy as np
import torch

from bench import gpu_check


def test_smoke_mode_writes_the_report(tmp_path) -> None:
    assert gpu_check.main(["--device", "cpu", "--smoke", "--items", "3000", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    s = report["sections"]
    assert set(s) == {"gpu_tests", "graph_parity", "search_exact", "encode_search", "load"}
    assert s["gpu_tests"]["status"] == "skipped"
    assert s["graph_parity"]["status"] == "passed" and not s["graph_parity"]["capture_under_load_errors"]
    assert s["search_exact"]["recall_at_100_tie_aware"] == 1.0 and s["search_exact"]["items"] == 3000
    assert s["search_exact"]["mask_uploads_for_repeated_filter"] == 1
    assert set(s["encode_search"]) == {"batch_1_top10", "batch_64_top10"}
    assert s["load"]["status"] == "loaded" and s["load"]["ann_recall"]["as_placed"]["recall"] == 1.0
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.startswith("| check | result |") and "recall@100" in md


def test_search_without_faiss_uses_the_torch_reference(monkeypatch) -> None:
    real = gpu_check.has
    monkeypatch.setattr(gpu_check, "has", lambda *m: False if "faiss" in m else real(*m))
    vectors = gpu_check.unit_vectors(2000, 16, torch.device("cpu"))
    out, engine = gpu_check.search_exact(vectors, torch.device("cpu"), smoke=True)
    assert out["path"].startswith("index.torch_search") and out["reference"].startswith("torch fp32")
    assert out["recall_at_100_tie_aware"] == 1.0 and out["max_abs_score_error"] < 1e-5
    assert isinstance(engine.topk_rows(vectors[:2].astype(np.float32), 5), np.ndarray)
