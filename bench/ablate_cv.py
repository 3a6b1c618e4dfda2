"""Objective variants on a VALIDATION split of the sample catalog's interactions (docs/RESULTS.md).

    .venv/bin/python -m bench.ablate_cv [ft-base pmrl-base ft-cv025 ft-cv01 ft-ot0] \
        [--sample var/sample] [--out var/ablate] [--image-cache var/artifacts/cache/images]

10% of the interaction query strings (sha1 of "val:" + the normalised query < 0.1) are held out of
training and scored as judgments (relevance 1 = clicked); each variant trains on the other 90%
with seed 0 and the build's defaults except its override. The sample catalog's test judgments are
never read, so choices made here do not leak into the RESULTS table. One JSON line per variant
(cached in OUT/<name>.json): Recall@10/100, MRR@10 and the mean leave-one-view-out Recall@10.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from service.build.pipeline import build_index, build_options

VARIANTS: dict[str, tuple[str, dict[str, float]]] = {
    "ft-base": ("ft", {}),
    "ft-cv025": ("ft", {"cross_view_weight": 0.25}),
    "ft-cv01": ("ft", {"cross_view_weight": 0.1}),
    "ft-ot0": ("ft", {"transport_weight": 0.0}),
    "pmrl-base": ("pmrl", {}),
}
VAL_FRACTION = 0.1


def is_val(query: str) -> bool:
    h = hashlib.sha1(("val:" + " ".join(query.lower().split())).encode()).hexdigest()
    return int(h[:8], 16) / 2**32 < VAL_FRACTION


def split(interactions: Path, out: Path) -> tuple[Path, Path]:
    """-> (train90.jsonl interactions, val.jsonl judgments), written once."""
    train, val = out / "train90.jsonl", out / "val.jsonl"
    if not train.exists():
        out.mkdir(parents=True, exist_ok=True)
        with open(interactions) as f, open(train, "w") as ft, open(val, "w") as fv:
            for line in f:
                row = json.loads(line)
                if is_val(row["query"]):
                    fv.write(json.dumps({"query": row["query"], "item_id": row["item_id"], "relevance": 1}) + "\n")
                else:
                    ft.write(json.dumps(row) + "\n")
    return train, val


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--sample", type=Path, default=Path("var/sample"))
    p.add_argument("--out", type=Path, default=Path("var/ablate"))
    p.add_argument("--image-cache", type=Path, default=Path("var/artifacts/cache/images"))
    a = p.parse_args()
    train, val = split(a.sample / "interactions.jsonl", a.out)
    for name in a.variants:
        cached = a.out / f"{name}.json"
        if cached.exists():
            print(cached.read_text().strip())
            continue
        objective, overrides = VARIANTS[name]
        result = build_index(build_options(
            catalog=a.sample / "catalog.jsonl", artifacts=a.out / "runs" / name, interactions=train, judgments=val,
            objective=objective, seed=0, publish=False, version=name, progress=False, min_relevant=1,
            image_cache=a.image_cache, train_overrides=overrides))
        m = result.manifest["metrics"]
        views = {k: v for k, v in m.get("cross_view", {}).items() if k != "mean"}
        row = {"name": name, "recall@10": m["recall@10"], "recall@100": m["recall@100"], "mrr@10": m["mrr@10"],
               "cross_view_recall@10": sum(v["recall@10"] for v in views.values()) / max(1, len(views))}
        cached.write_text(json.dumps(row))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
