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
import sys
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


def invocation() -> list[str]:
    """The command line that reruns this benchmark: `python -m bench.NAME args` (how benches run)."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    module = spec.name if spec is not None else None
    return [sys.executable, *(["-m", module] if module else [sys.argv[0]]), *sys.argv[1:]]


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
