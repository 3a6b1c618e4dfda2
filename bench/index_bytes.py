"""Bytes per listing of each index family, for the sizing plan in docs/DEPLOY.md.

    nice -n 10 .venv/bin/python -m bench.index_bytes [--n 100000] [--dim 256] [--json out.json]

Builds one index of each family over the same clustered unit vectors (a mixture of Gaussians on the
sphere, like fused listing embeddings: tight near-duplicate groups inside broader categories) and
reports the serialized size / n (what a replica holds in host or GPU memory, up to small fixed
overheads), build time, and recall@10 against exact search at the search parameters the service
uses (index/build.py: nprobe 16, efSearch 64).

Families: `Flat` (fp32, faiss-cpu), `SQfp16` (the fp16 exact scan: what the torch-cuda placement
holds on the GPU), `IVF…,PQ…x8` (what `choose_index_key` picks for large catalogs), and optionally
`HNSW32,Flat` (--hnsw; the medium-size choice, slow to build on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform

import faiss
import numpy as np

from index.build import apply_params, build_index, bytes_per_item


def clustered_unit_vectors(n: int, dim: int, n_topics: int, n_groups: int, seed: int) -> np.ndarray:
    """(n, dim) float32 unit vectors: topic centre + group offset + item noise, normalised."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((n_topics, dim)).astype(np.float32)  # (T, d)
    groups = topics[rng.integers(0, n_topics, n_groups)] + 0.6 * rng.standard_normal((n_groups, dim)).astype(np.float32)  # (G, d)
    x = groups[rng.integers(0, n_groups, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)  # (n, d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def recall_at(found: np.ndarray, truth: np.ndarray, k: int, depth: int) -> float:
    """Mean |found[:, :depth] ∩ truth[:, :k]| / k: the share of the exact top-k that the index
    returns within its first `depth` results (depth = k: recall@k; depth > k: what a re-ranking of
    `depth` candidates with the exact vectors can recover)."""
    hits = sum(len(set(f[:depth].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (k * len(truth))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hnsw", action="store_true", help="also build HNSW32,Flat")
    ap.add_argument("--keys", help="index_factory strings separated by ';' instead of the default families")
    ap.add_argument("--json", help="write the rows here as JSON")
    args = ap.parse_args(argv)

    n, d = args.n, args.dim
    x = clustered_unit_vectors(n + args.queries, d, n_topics=200, n_groups=max(1, n // 50), seed=args.seed)
    base, queries = x[:n], x[n:]  # (n, d), (Q, d): queries come from the same distribution
    nlist = int(2 ** round(math.log2(max(64, 4 * math.sqrt(n)))))  # index/build.py's rule
    keys = ["Flat", "SQfp16", f"IVF{nlist},PQ32x8", f"IVF{nlist},PQ64x8"] + (["HNSW32,Flat"] if args.hnsw else [])
    if args.keys:
        keys = [k.strip() for k in args.keys.split(";") if k.strip()]

    exact = faiss.IndexFlatIP(d)
    exact.add(base)
    _, truth = exact.search(queries, 10)  # (Q, 10) exact top-10

    print(f"# n={n} dim={d} queries={args.queries} faiss={faiss.__version__} threads={faiss.omp_get_max_threads()} "
          f"cpu={platform.processor() or platform.machine()} load={os.getloadavg()[0]:.2f}")
    print("| index key | bytes / item (serialized) | estimate (index/build.py) | build s | recall@10 | top-10 in top-100 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for key in keys:
        built = build_index(base, key, seed=args.seed)
        apply_params(built.index, built.params)
        nbytes = int(faiss.serialize_index(built.index).nbytes)
        _, found = built.index.search(queries, 100)  # (Q, 100)
        row = {"key": key, "n": n, "dim": d, "bytes": nbytes, "bytes_per_item": nbytes / n,
               "estimate_bytes_per_item": bytes_per_item(key, d), "build_s": built.build_seconds,
               "params": built.params, "recall@10": recall_at(found, truth, 10, 10),
               "recall_10_at_100": recall_at(found, truth, 10, 100)}
        rows.append(row)
        print(f"| `{key}` | {row['bytes_per_item']:.1f} | {row['estimate_bytes_per_item']:.0f} | "
              f"{row['build_s']:.1f} | {row['recall@10']:.3f} | {row['recall_10_at_100']:.3f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
