"""ikea: 2,187 multi-view listings (title, description, tags text, catalogue photo, room photos).

    nice -n 10 .venv/bin/python -m bench.realdata.ikea \
        [--run clip --run ft --run oat --run pmrl ...] [--steps train,eval,baselines,table] [--redo STEP]

Reads ../shared/data/ikea (catalog.jsonl, rooms.jsonl, images/); writes var/realdata/ikea/. There
are no shopper queries: every run trains self-supervised (pseudo-queries cut from each listing's
own texts; no labels of any task below are used), then bench/realdata/ikea_tasks.py scores the
cross-view, room-photo and category tasks for every run and for the untrained baselines (BM25,
frozen MiniLM, frozen EfficientNet-Lite0 features). One seed per run unless the spec says seed=N.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.common import invocation, machine
from bench.realdata.common import (
    DATA,
    OUT,
    Steps,
    markdown_table,
    require,
    setup_logging,
    with_ci,
)
from bench.realdata.runs import build_run, parse_spec

DEFAULT_RUNS = ("clip", "ft", "oat", "pmrl")
VIEWS = ("title", "description", "tags", "image", "image_other")


def data_paths() -> dict[str, Path]:
    src = DATA / "ikea"
    out = OUT / "ikea"
    require(src / "rooms.jsonl")
    return {"src": src, "catalog": require(src / "catalog.jsonl"), "out": out, "artifacts": out / "artifacts",
            "image_cache": out / "image-cache", "cache": out / "cache"}


_DATA: dict[str, Any] = {}


def _data(p: dict[str, Path]) -> Any:
    if "ikea" not in _DATA:
        from bench.realdata.ikea_tasks import load_ikea

        _DATA["ikea"] = load_ikea(p["src"], p["image_cache"])
    return _DATA["ikea"]


def step_train(p: dict[str, Path], spec: str) -> dict[str, Any]:
    return build_run(parse_spec(spec), catalog=p["catalog"], artifacts=p["artifacts"], interactions=None,
                     image_cache=p["image_cache"])


def step_eval(p: dict[str, Path], spec: str) -> dict[str, Any]:
    from bench.realdata.ikea_tasks import model_tasks
    from bench.realdata.modeleval import version_dir

    run = parse_spec(spec)
    return {"system": run.name, "objective": run.objective,
            **model_tasks(version_dir(p["artifacts"], run.name), _data(p))}


def step_baselines(p: dict[str, Path]) -> dict[str, Any]:
    from bench.realdata.frozen import FrozenMiniLM
    from bench.realdata.ikea_tasks import category_baselines, room_baseline, text_crossview_baselines

    data = _data(p)
    minilm = FrozenMiniLM(p["cache"])
    return {"cross_view": text_crossview_baselines(data, minilm), "category": category_baselines(data, minilm),
            "rooms": {"efficientnet": room_baseline(data)}, "n_listings": len(data.listings),
            "n_rooms": len(data.rooms)}


def _cv(res: dict[str, Any], view: str, k: int) -> str:
    m = res.get(view)
    return with_ci(m, f"recall@{k}") if m else "–"


def step_table(p: dict[str, Path], steps: Steps, runs: list[str]) -> dict[str, Any]:
    base = steps.load("baselines") if steps.have("baselines") else None
    evals = [(parse_spec(s).name, steps.load(f"eval-{parse_spec(s).name}")) for s in runs
             if steps.have(f"eval-{parse_spec(s).name}")]
    md = []
    # 1. cross-view
    header = ["system"] + [f"{v} R@{k}" for v in VIEWS for k in (1, 10)]
    rows = []
    if base:
        for name, label in (("bm25", "BM25"), ("minilm", "frozen MiniLM")):
            cv = base["cross_view"][name]
            rows.append([label] + [_cv(cv, v, k) for v in VIEWS for k in (1, 10)])
    for name, res in evals:
        rows.append([f"`{name}`"] + [_cv(res["cross_view"], v, k) for v in VIEWS for k in (1, 10)])
    n_q = {v: next((r["cross_view"][v]["n_queries"] for _, r in evals if v in r["cross_view"]), None) for v in VIEWS}
    md += ["### Cross-view, leave-one-view-out (R@1, R@10 [95% CI] of the listing itself, 2,187 listings)", "",
           markdown_table(header, rows), "",
           "Queries per view: " + ", ".join(f"{v} {int(n) if n else '–'}" for v, n in n_q.items()), ""]
    # 2. rooms
    header = ["system", "query head", "targets", "R@10", "R@50", "nDCG@10", "rooms"]
    rows = []
    if base:
        m = base["rooms"]["efficientnet"]
        rows.append(["frozen EfficientNet-Lite0", "–", "catalogue photo", with_ci(m, "recall@10"),
                     with_ci(m, "recall@50"), with_ci(m, "ndcg@10"), m["n_queries"]])
    for name, res in evals:
        for key, m in res["rooms"].items():
            head, targets = key.split("/")
            rows.append([f"`{name}`", head, targets.replace("_", " "), with_ci(m, "recall@10"),
                         with_ci(m, "recall@50"), with_ci(m, "ndcg@10"), m["n_queries"]])
    md += ["### Room photo -> the listings shown in it (full catalog)", "", markdown_table(header, rows), ""]
    # 3. category
    header = ["system", "R@10", "R@100", "nDCG@10", "categories"]
    rows = []
    if base:
        for name, label in (("bm25", "BM25 (title + description + tags text)"),
                            ("minilm", "frozen MiniLM (mean of the text views)")):
            m = base["category"][name]
            rows.append([label, with_ci(m, "recall@10"), with_ci(m, "recall@100"), with_ci(m, "ndcg@10"),
                         m["n_queries"]])
    for name, res in evals:
        m = res["category"]
        rows.append([f"`{name}`", with_ci(m, "recall@10"), with_ci(m, "recall@100"), with_ci(m, "ndcg@10"),
                     m["n_queries"]])
    md += ["### Category text -> listings of that category (categories with >= 2 listings)", "",
           markdown_table(header, rows), ""]
    text = "\n".join(md)
    (p["out"] / "table.md").write_text(text)
    print(text)
    return {"machine": machine(), "markdown": text}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", dest="runs", help="a run spec (bench/realdata/runs.py), repeatable; "
                    f"default: {' '.join(DEFAULT_RUNS)}")
    ap.add_argument("--steps", default="train,eval,baselines,table")
    ap.add_argument("--redo", default="", help="steps to recompute even if cached (comma-separated names)")
    a = ap.parse_args(argv)
    setup_logging()
    print("$ " + " ".join(invocation()), flush=True)
    p = data_paths()
    steps = Steps(p["out"], a.redo.split(","))
    want = set(a.steps.split(","))
    runs = a.runs or list(DEFAULT_RUNS)
    for spec in runs:
        name = parse_spec(spec).name
        if "train" in want:
            steps.run(f"train-{name}", lambda spec=spec: step_train(p, spec))
        if "eval" in want:
            steps.run(f"eval-{name}", lambda spec=spec: step_eval(p, spec))
    if "baselines" in want:
        steps.run("baselines", lambda: step_baselines(p))
    if "table" in want:  # always rebuilt from the cached steps
        table = step_table(p, steps, runs)
        (p["out"] / "table.json").write_text(json.dumps(table, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
