"""homedepot: real shopper queries over 54,667 listings (titles only).

    nice -n 10 .venv/bin/python -m bench.realdata.homedepot \
        [--run clip:epochs=1 --run ft:epochs=1 ...] [--steps split,bm25,...,table] [--redo STEP]

Reads ../shared/data/homedepot (catalog.jsonl, judgments.jsonl); writes var/realdata/homedepot/.
Split (bench/realdata/split.py): queries by a stable hash of the normalised text, 20% test; a 10%
validation slice of the rest is held out of training and used for every training choice. Training
pairs: train queries' judgments with relevance >= 2, weight = relevance - 1. Evaluation: the TEST
queries over the whole catalog, relevant = relevance >= 2 (`service eval --min-relevant 2`), with
bootstrap 95% CIs over queries. Systems: BM25 on titles; frozen MiniLM (mean-pooled, cosine, no
projection); the model family untrained (0 epochs: frozen MiniLM in a random 256-d subspace);
`clip` and `ft` as built by the runs. Every listing has a single view (its title), so `clip` and
`ft` train and index the same view: `ft` differs only by its transport term.

Each step's result is cached as JSON; rerunning skips finished steps and finished builds.
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
    show_command,
    with_ci,
)
from bench.realdata.runs import build_run, parse_spec

K = 500
HEADLINE = ("recall@10", "recall@100", "recall@500", "ndcg@10", "mrr@10")
DEFAULT_RUNS = ("clip:epochs=1", "ft:epochs=1")


def data_paths() -> dict[str, Path]:
    src = DATA / "homedepot"
    out = OUT / "homedepot"
    return {"catalog": require(src / "catalog.jsonl"), "judgments": require(src / "judgments.jsonl"), "out": out,
            "split": out / "split", "artifacts": out / "artifacts", "cache": out / "cache"}


def _catalog(path: Path) -> tuple[list[str], list[str]]:
    from model.data.catalog import load_catalog

    listings = load_catalog(path).listings
    return [x.id for x in listings], [x.title for x in listings]


def _judgments(path: Path, ids: list[str]) -> Any:
    from bench.realdata.split import MIN_RELEVANT
    from model.data.interactions import load_judgments

    return load_judgments(path, set(ids), min_relevant=MIN_RELEVANT)


def _score(ranked_rows: list[list[int]], ids: list[str], labels: Any) -> dict[str, Any]:
    from bench.realdata.scoring import score_rankings

    ranked = [[ids[r] for r in row] for row in ranked_rows]
    return score_rankings(ranked, labels.queries, labels)


def step_split(p: dict[str, Path]) -> dict[str, Any]:
    from bench.realdata.split import write_split

    return write_split(p["judgments"], p["split"])


def step_bm25(p: dict[str, Path]) -> dict[str, Any]:
    from bench.realdata.lexical import Bm25

    ids, titles = _catalog(p["catalog"])
    out: dict[str, Any] = {"system": "BM25 (titles)", "tokenisation": "lowercase, split on non-alphanumerics, "
                           "no stemming, no stop words; bm25s Lucene k1=1.5 b=0.75"}
    bm25 = Bm25(titles)
    for split in ("val", "test"):
        labels = _judgments(p["split"] / f"{split}_judgments.jsonl", ids)
        out[split] = _score(bm25.top(labels.queries, K), ids, labels)
    return out


def _dense(p: dict[str, Path], project: Any, name: str) -> dict[str, Any]:
    import faiss

    from bench.realdata.frozen import FrozenMiniLM, unit
    from model.config import TextConfig

    ids, titles = _catalog(p["catalog"])
    enc = FrozenMiniLM(p["cache"])
    docs = unit(project(enc.encode(titles, TextConfig.max_title_tokens, "titles")))  # (n, d)
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(docs)
    out: dict[str, Any] = {"system": name}
    for split in ("val", "test"):
        labels = _judgments(p["split"] / f"{split}_judgments.jsonl", ids)
        q = unit(project(enc.encode(labels.queries, TextConfig.max_query_tokens, f"{split}-queries")))
        _, rows = index.search(q, K)
        out[split] = _score([[int(r) for r in row if r >= 0] for row in rows], ids, labels)
    return out


def step_minilm(p: dict[str, Path]) -> dict[str, Any]:
    return _dense(p, lambda x: x, "frozen MiniLM (384-d, mean-pooled, cosine)")


def step_untrained(p: dict[str, Path]) -> dict[str, Any]:
    from bench.realdata.frozen import untrained_projection

    w = untrained_projection(seed=0)  # (256, 384)
    return _dense(p, lambda x: x @ w.T, "model family, 0 epochs (frozen MiniLM, random 256-d subspace, seed 0)")


def step_train(p: dict[str, Path], spec: str) -> dict[str, Any]:
    run = parse_spec(spec)
    from bench.realdata.split import MIN_RELEVANT

    # the validation slice scores every epoch (early stopping, when the spec sets patience)
    val = p["split"] / "val_judgments.jsonl" if run.train.get("patience") else None
    negatives = None
    if run.inputs.get("negatives"):
        from bench.realdata.split import write_negatives

        negatives, _ = write_negatives(p["judgments"], p["split"])
    return build_run(run, catalog=p["catalog"], artifacts=p["artifacts"],
                     interactions=p["split"] / "train_interactions.jsonl", validation=val, min_relevant=MIN_RELEVANT,
                     negatives=negatives)


def step_eval(p: dict[str, Path], spec: str) -> dict[str, Any]:
    from bench.realdata.modeleval import query_rankings, version_dir
    from bench.realdata.scoring import score_rankings

    run = parse_spec(spec)
    folder = version_dir(p["artifacts"], run.name)
    ids, _ = _catalog(p["catalog"])
    out: dict[str, Any] = {"system": run.name, "objective": run.objective}
    for split in ("val", "test"):
        path = p["split"] / f"{split}_judgments.jsonl"
        show_command(["service", "eval", "--artifacts", p["artifacts"], "--version", run.name, "--judgments", path,
                      "--min-relevant", "2", "--device", "cpu"], "same metrics; CIs added here")
        labels = _judgments(path, ids)
        ranked, info = query_rankings(folder, labels.queries, K)
        out[split] = score_rankings(ranked, labels.queries, labels) | {"latency": info}
    return out


def _row(name: str, res: dict[str, Any], split: str) -> list[Any]:
    m = res[split]
    return [name] + [with_ci(m, k) for k in HEADLINE] + [m.get("n_queries")]


def step_table(p: dict[str, Path], steps: Steps, runs: list[str]) -> dict[str, Any]:
    header = ["system"] + [f"{k} [95% CI]" for k in ("R@10", "R@100", "R@500", "nDCG@10", "MRR@10")] + ["queries"]
    fixed = [("BM25 (titles)", "bm25"), ("frozen MiniLM, zero-shot", "minilm"),
             ("untrained model (0 epochs)", "untrained")]
    rows = {"test": [], "val": []}
    for label, name in fixed:
        if steps.have(name):
            for split in rows:
                rows[split].append(_row(label, steps.load(name), split))
    # Per objective: every run, and which one the VALIDATION nDCG@10 picks.
    chosen: dict[str, str] = {}
    for spec in runs:
        run = parse_spec(spec)
        if not steps.have(f"eval-{run.name}"):
            continue
        res = steps.load(f"eval-{run.name}")
        best = chosen.get(run.objective)
        if best is None or res["val"]["ndcg@10"] > steps.load(f"eval-{best}")["val"]["ndcg@10"]:
            chosen[run.objective] = run.name
        for split in rows:
            rows[split].append(_row(f"`{run.name}`", res, split))
    md = ["### Test queries (whole catalog, relevant = relevance >= 2)", "", markdown_table(header, rows["test"]), "",
          "### Validation slice of the train queries (used for choices)", "", markdown_table(header, rows["val"]), "",
          "Chosen by validation nDCG@10: " + ", ".join(f"{o}: `{n}`" for o, n in chosen.items()), ""]
    md += _paired(steps, chosen)
    text = "\n".join(md) + "\n"
    (p["out"] / "table.md").write_text(text)
    print(text)
    return {"chosen": chosen, "machine": machine(), "markdown": text}


def _paired(steps: Steps, chosen: dict[str, str]) -> list[str]:
    """Test-set differences of the chosen `ft` against each other system, query by query."""
    from bench.realdata.scoring import paired_difference

    if "ft" not in chosen:
        return []
    ft = steps.load(f"eval-{chosen['ft']}")["test"]
    others = [("BM25", "bm25"), ("frozen MiniLM", "minilm")] + [
        (f"`{name}`", f"eval-{name}") for obj, name in chosen.items() if obj != "ft"]
    header = ["ft minus"] + [k for k in HEADLINE]
    rows = []
    for label, step in others:
        if not steps.have(step) or "per_query" not in steps.load(step)["test"]:
            continue
        other = steps.load(step)["test"]["per_query"]
        cells = []
        for k in HEADLINE:
            d = paired_difference(ft["per_query"][k], other[k])
            cells.append(f"{d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]")
        rows.append([label] + cells)
    return ["### `" + chosen["ft"] + "` minus each system, test queries, paired bootstrap 95% CI", "",
            markdown_table(header, rows), ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", dest="runs", help="a run spec (bench/realdata/runs.py), repeatable; "
                    f"default: {' '.join(DEFAULT_RUNS)}")
    ap.add_argument("--steps", default="split,bm25,minilm,untrained,train,eval,table")
    ap.add_argument("--redo", default="", help="steps to recompute even if cached (comma-separated names)")
    a = ap.parse_args(argv)
    setup_logging()
    show_command(invocation())
    p = data_paths()
    steps = Steps(p["out"], a.redo.split(","))
    want = set(a.steps.split(","))
    runs = a.runs or list(DEFAULT_RUNS)
    if "split" in want:
        steps.run("split", lambda: step_split(p))
    for name, fn in (("bm25", step_bm25), ("minilm", step_minilm), ("untrained", step_untrained)):
        if name in want:
            steps.run(name, lambda fn=fn: fn(p))
    for spec in runs:
        name = parse_spec(spec).name
        if "train" in want:
            steps.run(f"train-{name}", lambda spec=spec: step_train(p, spec))
        if "eval" in want:
            steps.run(f"eval-{name}", lambda spec=spec: step_eval(p, spec))
    if "table" in want:  # always rebuilt from the cached steps
        table = step_table(p, steps, runs)
        (p["out"] / "table.json").write_text(json.dumps(table, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
