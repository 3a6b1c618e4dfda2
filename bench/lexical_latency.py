"""What the lexical stage and the fusion add to a search, at 100k listings on CPU.

    nice -n 19 .venv/bin/python -m bench.lexical_latency [--items 100000] [--queries 1000]

Documents: the homedepot titles (../shared/data/homedepot/catalog.jsonl, read, never copied),
repeated with a per-copy model number appended ("... MX-4821B") until there are --items of them;
without that file, synthetic titles drawn from a Zipf vocabulary (said in the output). Queries:
the homedepot judged queries (or synthetic ones). Timed, per query, exactly what the engine adds
for a hybrid request (service/serving/engine.py):
  lexical   LexicalIndex.scores (bm25s) + top_k(candidates), unfiltered and under a 10% row mask;
  fuse      index.rank_fusion.hybrid_one, rrf and weighted (exact cosines of the candidates from fp16
            vectors, as the engine reads them), with a dense top-100 list computed untimed.
Single thread (the search worker's), p50/p99 over the queries; writes var/bench/lexical_latency.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import invocation, machine, percentiles_ms

REPO = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/homedepot")


def documents(n: int, seed: int = 0) -> tuple[list[str], list[str], str]:
    rng = random.Random(seed)
    catalog, judgments = DATA / "catalog.jsonl", DATA / "judgments.jsonl"
    if catalog.is_file() and judgments.is_file():
        titles = [json.loads(line)["title"] for line in catalog.read_text().splitlines() if line.strip()]
        queries = sorted({json.loads(line)["query"] for line in judgments.read_text().splitlines() if line.strip()})
        source = f"homedepot titles ({len(titles)}) repeated with a model number per copy"
    else:
        print(f"{DATA}: missing; using synthetic titles", flush=True)
        vocab = [f"w{i}" for i in range(20_000)]
        weights = [1 / (i + 1) for i in range(len(vocab))]
        titles = [" ".join(rng.choices(vocab, weights, k=rng.randint(4, 12))) for _ in range(50_000)]
        queries = [" ".join(rng.choices(vocab, weights, k=rng.randint(1, 4))) for _ in range(5_000)]
        source = "synthetic Zipf titles"
    docs = []
    while len(docs) < n:
        for t in titles[: n - len(docs)]:
            docs.append(f"{t} {rng.choice('ABCDEFGHJK')}{rng.choice('XMQZ')}-{rng.randint(1000, 9999)}B")
    rng.shuffle(queries)
    return docs, queries, source


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "lexical_latency.json")
    a = ap.parse_args(argv)
    import faiss

    from index.lexical import LexicalIndex, top_k
    from index.rank_fusion import FusionSpec, hybrid_one

    faiss.omp_set_num_threads(1)
    docs, queries, source = documents(a.items)
    queries = queries[: a.queries]
    t0 = time.perf_counter()
    lex = LexicalIndex.build(docs)
    build_s = time.perf_counter() - t0
    sc = lex._bm25.scores
    index_bytes = int(sc["data"].nbytes + sc["indices"].nbytes + sc["indptr"].nbytes)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((a.items, a.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors16 = vectors.astype(np.float16)
    qvecs = rng.standard_normal((len(queries), a.dim)).astype(np.float32)
    qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(a.dim)
    index.add(vectors)
    _, dense_rows = index.search(qvecs, a.candidates)  # (Q, cand), untimed
    mask = rng.random(a.items) < 0.1  # a filter keeping 10% of the rows
    specs = {"rrf": FusionSpec(candidates=a.candidates), "weighted": FusionSpec("weighted", candidates=a.candidates)}
    times: dict[str, list[float]] = {"lexical": [], "lexical_filtered": [], "fuse_rrf": [], "fuse_weighted": []}
    matched = []
    for q in queries[:20]:  # warm-up
        top_k(lex.scores(q), a.candidates)
    for j, q in enumerate(queries):
        t = time.perf_counter()
        full = lex.scores(q)
        rows, _ = top_k(full, a.candidates)
        times["lexical"].append(time.perf_counter() - t)
        matched.append(int((full > 0).sum()))
        t = time.perf_counter()
        top_k(lex.scores(q), a.candidates, mask)
        times["lexical_filtered"].append(time.perf_counter() - t)
        for method, spec in specs.items():
            t = time.perf_counter()
            hybrid_one(dense_rows[j], rows, spec, spec.depth(10, 0),
                       lambda rs, qv=qvecs[j]: np.asarray(vectors16[rs], np.float32) @ qv,
                       lambda rs, full=full: full[rs])
            times[f"fuse_{method}"].append(time.perf_counter() - t)
    result = {
        "command": " ".join(invocation()), "machine": machine(), "documents": source,
        "items": a.items, "queries": len(queries), "candidates": a.candidates, "build_s": round(build_s, 2),
        "index_mib": round(index_bytes / 2**20, 1), "vocab": lex.describe()["vocab"],
        "matching_docs_per_query": {"p50": float(np.median(matched)), "p99": float(np.percentile(matched, 99))},
        "ms_per_query": {k: percentiles_ms(v) for k, v in times.items()},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
