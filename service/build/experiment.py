"""`service experiment`: train several objectives on the same split with the same seeds and write
one comparison table (mean ± std over seeds) plus a report with plots (service/build/report.py).

Each (objective, seed) run is an ordinary unpublished build under OUT/runs/<objective>-s<seed>/;
finished runs are recorded in OUT/results.jsonl and skipped when the command is run again, so a
long comparison can be resumed.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from service.build.pipeline import BuildOptions, build_index
from service.build.report import write_report

log = logging.getLogger("service.build.experiment")

def with_crossview_mean(metrics: dict[str, Any]) -> dict[str, Any]:
    cv = metrics.get("cross_view") or {}
    per_view = [v for k, v in cv.items() if k != "mean" and isinstance(v, dict)]
    if per_view:
        cv["mean"] = {k: statistics.fmean(v[k] for v in per_view) for k in ("recall@1", "recall@10")}
    return metrics


def run_one(base: BuildOptions, out: Path, objective: str, seed: int) -> dict[str, Any]:
    name = f"{objective}-s{seed}"
    opts = replace(base, objective=objective, seed=seed, artifacts=out / "runs" / name, version=name,
                   publish=False, image_cache=base.image_cache or out / "image-cache")
    result = build_index(opts)
    report = json.loads((result.path / "report.json").read_text())
    history = report["training"]["history"]
    return {
        "objective": objective, "seed": seed, "version": result.version,
        "metrics": with_crossview_mean(result.manifest.get("metrics", {})),
        "items_per_s": history.get("items_per_s"), "epochs": history.get("epochs", []),
        "train_s": result.manifest["timings"].get("train_s"),
        "modality_gap": result.manifest.get("modality_gap"),
    }


def release_memory() -> None:
    """Collect the finished run's objects and hand freed heap back to the OS (glibc keeps it
    otherwise, and twelve runs in one process would hold every run's peak)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def load_results(out: Path) -> list[dict[str, Any]]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_experiment(base: BuildOptions, out: Path, objectives: Sequence[str], seeds: Sequence[int]) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    done = {(r["objective"], r["seed"]) for r in load_results(out)}
    for seed in seeds:
        for objective in objectives:
            if (objective, seed) in done:
                log.info("skip %s seed %d: already in results.jsonl", objective, seed)
                continue
            log.info("run %s seed %d", objective, seed)
            record = run_one(base, out, objective, seed)
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(record, default=float) + "\n")
            release_memory()  # a run's caches (trunk states, view embeddings) are large
    results = [r for r in load_results(out) if r["objective"] in objectives and r["seed"] in seeds]
    write_report(results, out)
    return results
