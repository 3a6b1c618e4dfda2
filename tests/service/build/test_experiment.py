"""The comparison runner: runs are recorded, resumed, summarised (mean ± std) and reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.build.experiment import run_experiment
from service.build.pipeline import build_options
from service.build.report import summarise


@pytest.mark.slow
def test_experiment_table_report_and_resume(tiny_sample: Path, tiny_build, tmp_path: Path, monkeypatch) -> None:
    base = build_options(catalog=tiny_sample / "catalog.jsonl", artifacts=tmp_path, interactions=tiny_sample / "interactions.jsonl",
                         judgments=tiny_sample / "judgments.jsonl", epochs=1, batch_size=64, device="cpu", progress=False,
                         image_cache=tiny_build.path.parent.parent.parent / "image-cache")
    results = run_experiment(base, tmp_path / "exp", ["ft", "clip"], [0, 1])
    assert {(r["objective"], r["seed"]) for r in results} == {("ft", 0), ("ft", 1), ("clip", 0), ("clip", 1)}
    table = summarise(results)
    mean, std, n = table["ft"]["R@100"]
    assert n == 2 and 0 <= mean <= 1 and std >= 0
    assert "xview R@10" in table["ft"] and "R@100 aux" in table["clip"]
    report = (tmp_path / "exp" / "report.md").read_text()
    assert "| ft | 2 |" in report and "recall_at_k.png" in report
    for png in ("recall_at_k.png", "training_curves.png", "cross_view.png"):
        assert (tmp_path / "exp" / png).stat().st_size > 1000
    # a second call finds every run done and trains nothing
    import service.build.experiment as exp

    monkeypatch.setattr(exp, "run_one", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-ran")))
    again = run_experiment(base, tmp_path / "exp", ["ft", "clip"], [0, 1])
    assert len(again) == 4
