"""The homedepot query split: by a stable hash of the NORMALISED query text, never by row.

normalise(q) = lowercase, whitespace collapsed. u(q) = int(sha1(normalise(q))[:8], 16) / 2**32.
  test        u < 0.2                       (20% of the queries, evaluated over the full catalog)
  validation  not test, v < 0.1             (v: the same with hex digits [8:16]; a slice of train
                                             used only for training choices, never the test)
  train       the rest
Two spellings of one query ("Angle Bracket", "angle  bracket") land on the same side.

Training pairs: the train queries' judgments with relevance >= 2, weight = relevance - 1 (so an
exact match, 3, weighs twice a 2). Judged negatives (`--negatives`, runs with negatives=1): the
train queries' judgments below 2, listings Home Depot's own search showed for the query and raters
found wrong. Evaluation: relevant = relevance >= 2 (`min_relevant=2`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEST_FRACTION = 0.2
VAL_FRACTION = 0.1  # of the non-test queries
MIN_RELEVANT = 2.0


def normalise(query: str) -> str:
    return " ".join(query.lower().split())


def hash_unit(query: str, start: int) -> float:
    digest = hashlib.sha1(normalise(query).encode("utf-8")).hexdigest()
    return int(digest[start:start + 8], 16) / 2**32


def side(query: str, test_fraction: float = TEST_FRACTION, val_fraction: float = VAL_FRACTION) -> str:
    """'test', 'val' or 'train' for a query (stable across runs, machines and file orders)."""
    if hash_unit(query, 0) < test_fraction:
        return "test"
    return "val" if hash_unit(query, 8) < val_fraction else "train"


@dataclass(frozen=True)
class SplitFiles:
    interactions: Path  # train queries, relevance >= 2, weight = relevance - 1
    interactions_all: Path  # the same over train + val (for a final refit, if one is wanted)
    val_judgments: Path
    test_judgments: Path
    summary: Path


def write_negatives(judgments: Path, out: Path, min_relevant: float = MIN_RELEVANT) -> tuple[Path, int]:
    """out/train_negatives.jsonl: {query, item_id} of the train queries' judgments below
    `min_relevant` (never a validation or test query) -> (the file, its rows)."""
    out.mkdir(parents=True, exist_ok=True)
    path, n = out / "train_negatives.jsonl", 0
    with open(judgments) as src, open(path, "w") as dst:
        for line in src:
            if not line.strip():
                continue
            row = json.loads(line)
            if side(row["query"]) == "train" and float(row["relevance"]) < min_relevant:
                dst.write(json.dumps({"query": row["query"], "item_id": row["item_id"]}) + "\n")
                n += 1
    return path, n


def write_split(judgments: Path, out: Path, min_relevant: float = MIN_RELEVANT) -> dict[str, Any]:
    """Write the split files under `out`; returns (and writes) a summary of the counts."""
    out.mkdir(parents=True, exist_ok=True)
    files = SplitFiles(out / "train_interactions.jsonl", out / "trainval_interactions.jsonl",
                       out / "val_judgments.jsonl", out / "test_judgments.jsonl", out / "split.json")
    rows: Counter[str] = Counter()
    pairs: Counter[str] = Counter()
    queries: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    with (open(judgments) as src, open(files.interactions, "w") as tr, open(files.interactions_all, "w") as tv,
          open(files.val_judgments, "w") as va, open(files.test_judgments, "w") as te):
        for line in src:
            if not line.strip():
                continue
            row = json.loads(line)
            s = side(row["query"])
            rows[s] += 1
            queries[s].add(normalise(row["query"]))
            if s == "test":
                te.write(line if line.endswith("\n") else line + "\n")
                continue
            if s == "val":
                va.write(line if line.endswith("\n") else line + "\n")
            if float(row["relevance"]) >= min_relevant:
                pair = json.dumps({"query": row["query"], "item_id": row["item_id"],
                                   "weight": round(float(row["relevance"]) - 1.0, 4)})
                tv.write(pair + "\n")
                pairs["trainval"] += 1
                if s == "train":
                    tr.write(pair + "\n")
                    pairs["train"] += 1
    overlap = (queries["train"] | queries["val"]) & queries["test"]
    if overlap:  # cannot happen with a hash of the normalised text; checked anyway
        raise AssertionError(f"{len(overlap)} normalised queries on both sides, e.g. {sorted(overlap)[:3]}")
    summary = {
        "source": str(judgments), "test_fraction": TEST_FRACTION, "val_fraction_of_rest": VAL_FRACTION,
        "min_relevant": min_relevant, "rows": dict(rows), "queries": {k: len(v) for k, v in queries.items()},
        "training_pairs": dict(pairs), "files": {k: str(v) for k, v in files.__dict__.items()},
    }
    files.summary.write_text(json.dumps(summary, indent=1))
    return summary
