"""Shared bits of the serving benchmarks: the query set, percentiles, the machine line.

Queries are the distinct query strings of the sample catalog's judgments and interactions (real
shopper-like text of the catalog's own vocabulary), in a fixed shuffled order.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def load_queries(sample: Path, n: int, seed: int = 0) -> list[str]:
    """Up to `n` distinct queries from sample/judgments.jsonl and sample/interactions.jsonl."""
    seen: dict[str, None] = {}
    for name in ("judgments.jsonl", "interactions.jsonl"):
        path = sample / name
        if not path.is_file():
            continue
        with open(path) as f:
            for line in f:
                q = " ".join(json.loads(line)["query"].split())
                if q:
                    seen.setdefault(q, None)
    if not seen:
        raise SystemExit(f"{sample}: no judgments.jsonl or interactions.jsonl with queries "
                         "(run `service sample-catalog --out {sample}`)")
    queries = sorted(seen)
    random.Random(seed).shuffle(queries)
    return queries[:n]


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    return {f"p{p}": round(float(np.percentile(a, p)), 3) for p in (50, 95, 99)} | {
        "mean": round(float(a.mean()), 3), "n": int(a.size)}


def machine() -> dict[str, object]:
    """Where and when: every quoted figure carries this line."""
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = (float("nan"),) * 3
    import torch

    return {"date": dt.date.today().isoformat(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "loadavg_1m": round(load[0], 2)}
