"""Index families at 100k and 1M vectors (d=256): build time, bytes per item, search latency,
ANN recall and filter overhead, on vectors drawn from a mixture FITTED to real embeddings.

    nice -n 10 .venv/bin/python -m bench.index_families [--sizes 100000,1000000] \
        [--source var/artifacts] [--sample var/sample] [--json out.json] [--hnsw-budget-s 240]

Data. Item vectors: a Gaussian mixture with diagonal covariances in the PCA basis of the fused
listing vectors of the source version (`service sample-catalog` + `service build-index` into
var/), fitted by EM (bench/make_artifact.py fit_gmm), sampled, rotated back and L2-normalised.
Query vectors: the sample catalog's real query strings encoded by the source version's query tower,
then a second mixture fitted to those and sampled (queries are not items: the modality gap stays).
Isotropic noise is never used: HNSW on random Gaussians has recall ~0.2 and tunes to nothing. The
fit's fidelity is printed (median nearest-neighbour and query-top-1 cosines, real vs drawn at the
real set's size): the drawn sets are more spread than the real ones, so recall is harder to get
here than on real embeddings (conservative figures).

Families, as the service builds them (index/build.py, nlist by its rule 4*sqrt(n) rounded to a
power of two): Flat, HNSW32,Flat, IVF<nlist>,Flat, IVF<nlist>,PQ64x8np. The IVF coarse quantiser is
trained on min(n, --train-per-list * nlist) vectors with --kmeans-iters iterations, the PQ codebooks
on --pq-train vectors with as many (2 loaded cores cannot afford faiss' defaults; the output says
what was used). Search parameters are tuned
by index/tune.py to ANN recall@10 >= 0.95 on 500 tuning queries; recall is then measured on 500
other queries. Latency goes through FaissCpuSearcher.search (the service's path): one query at a
time (p50/p99) and batches of 64, at k=10 and k=100. Filter overhead: random row masks of 10%, 1%,
0.1% selectivity, single-query p50 against the unfiltered p50 (at <= 50k matching rows the
service scans the subset exactly; above, faiss searches with an IDSelectorBitmap).

HNSW32 is added in chunks; when a build passes --hnsw-budget-s it stops and the add rate and the
extrapolated build time are reported instead of search figures (a 1M HNSW build takes longer
than a shared 2-core machine should be held).

Threads: one per search (--threads; faiss OpenMP) and OPENBLAS_NUM_THREADS=1 for numpy (set here
unless given): on a shared, oversubscribed machine multi-threaded BLAS and OpenMP spin-wait, which
measured 32 ms instead of 1 ms for a 20k Flat query and 16 ms instead of 0.05 ms for a 2,000-row
numpy scan (docs/PERFORMANCE.md "## Index").
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads OpenBLAS (see the docstring)

import faiss
import numpy as np

from bench.common import load_queries, machine
from bench.make_artifact import fit_gmm
from index.build import RERANK_FACTOR
from index.search import EXACT_SUBSET_MAX, FaissCpuSearcher, exact_subset
from index.store.artifacts import ArtifactStore
from index.tune import ann_recall, exact_topk, tune_search_params

SELECTIVITIES = (0.1, 0.01, 0.001)


def real_vectors(source: Path, sample: Path, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """-> (real fused item vectors, real query-tower vectors, source version)."""
    store = ArtifactStore(source)
    version = store.current_version()
    if version is None:
        raise SystemExit(f"{source}: no published version. Build one first:\n  service sample-catalog --out var/sample\n"
                         "  service build-index --catalog var/sample/catalog.jsonl --interactions "
                         "var/sample/interactions.jsonl --judgments var/sample/judgments.jsonl --artifacts var/artifacts")
    folder = store.version_dir(version)
    items = np.load(folder / "vectors.npy").astype(np.float32)
    from model.runtime.query_encoder import QueryEncoder

    enc = QueryEncoder(folder / "model.safetensors", folder / "tokenizer.json")
    texts = load_queries(sample, n_queries, seed)
    queries = np.concatenate([enc.encode(texts[i:i + 64]) for i in range(0, len(texts), 64)])
    return items, queries.astype(np.float32), version


class RotatedMixture:
    """A diagonal Gaussian mixture in the PCA basis of `x` (keeps the correlations a mixture with
    diagonal covariances in the raw coordinates would lose); samples are unit vectors."""

    def __init__(self, x: np.ndarray, k: int, seed: int):
        self.mean = x.mean(0)  # (d,)
        _, _, self.basis = np.linalg.svd(x - self.mean, full_matrices=False)  # (d, d) rows = components
        self.weights, self.means, self.var, _ = fit_gmm((x - self.mean) @ self.basis.T, k, seed=seed)

    def sample(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        comp = rng.choice(len(self.weights), size=n, p=self.weights / self.weights.sum())  # (n,)
        out = np.empty((n, self.means.shape[1]), dtype=np.float32)  # (n, d)
        for s in range(0, n, chunk):
            c = comp[s:s + chunk]
            z = self.means[c] + rng.standard_normal((len(c), self.means.shape[1])) * np.sqrt(self.var[c])  # (m, d)
            v = z @ self.basis + self.mean  # back to the embedding space
            out[s:s + chunk] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


def fidelity(real_items: np.ndarray, real_q: np.ndarray, items: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """Nearest-neighbour cosine among items and top-1 query->item cosine, real vs drawn (same n)."""
    def nn_cos(x: np.ndarray) -> float:
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        return float(np.median(s.max(1)))

    m = len(real_items)
    return {"real_nn_cos": nn_cos(real_items), "drawn_nn_cos": nn_cos(items[:m]),
            "real_query_top1_cos": float(np.median((real_q @ real_items.T).max(1))),
            "drawn_query_top1_cos": float(np.median((queries[:len(real_q)] @ items[:m].T).max(1)))}


def nlist_for(n: int) -> int:
    return int(2 ** round(math.log2(max(64, 4 * math.sqrt(n)))))  # index/build.py's rule


class SharedIVF:
    """One size's coarse quantiser, trained once, and every vector's list, assigned once, shared by
    the IVF families of that size (2 loaded cores cannot afford both twice at 1M). Each family's
    build time still counts the training and the assignment in full, as a build of its own would."""

    def __init__(self, x: np.ndarray, nlist: int, train_n: int, iters: int, seed: int):
        t0 = time.perf_counter()
        ivf = faiss.index_factory(x.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = iters
        self.sample = x if len(x) <= train_n else x[np.random.default_rng(seed).choice(len(x), train_n, replace=False)]
        ivf.train(self.sample)
        self.quantizer = faiss.clone_index(ivf.quantizer)
        self.train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, assign = self.quantizer.search(x, 1)
        self.assign = np.ascontiguousarray(assign[:, 0], dtype=np.int64)  # (n,)
        self.assign_s = time.perf_counter() - t0
        self.nlist = nlist

    def build(self, key: str, x: np.ndarray, iters: int, pq_train: int) -> tuple[faiss.Index, float]:
        m = re.fullmatch(r"IVF(\d+),(Flat|PQ(\d+)x(\d+)(np)?)", key)
        if m is None or int(m.group(1)) != self.nlist:
            raise SystemExit(f"--families: {key!r} is not IVF{self.nlist},Flat or IVF{self.nlist},PQ<m>x<bits>[np]")
        t0 = time.perf_counter()
        q, d = faiss.clone_index(self.quantizer), x.shape[1]
        if m.group(2) == "Flat":
            index = faiss.IndexIVFFlat(q, d, self.nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(q, d, self.nlist, int(m.group(3)), int(m.group(4)), faiss.METRIC_INNER_PRODUCT)
            index.do_polysemous_training = m.group(5) is None
            index.pq.cp.niter = iters
            index.pq.cp.max_points_per_centroid = max(1, pq_train // index.pq.ksub)  # faiss subsamples to this
            index.train(self.sample)  # the quantiser is trained: only the PQ codebooks are
        index.add_core(len(x), faiss.swig_ptr(x), None, faiss.swig_ptr(self.assign))
        return index, self.train_s + self.assign_s + time.perf_counter() - t0


def build_hnsw(x: np.ndarray, budget_s: float, chunk: int = 50_000) -> tuple[faiss.Index, float, bool]:
    index = faiss.index_factory(x.shape[1], "HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    for s in range(0, len(x), chunk):
        index.add(x[s:s + chunk])
        if time.perf_counter() - t0 > budget_s and index.ntotal < len(x):
            return index, time.perf_counter() - t0, False
    return index, time.perf_counter() - t0, True


def index_bytes(index: faiss.Index) -> int:
    with tempfile.NamedTemporaryFile(suffix=".faiss", dir=os.environ.get("TMPDIR")) as f:
        faiss.write_index(index, f.name)
        return os.path.getsize(f.name)


def pct(seconds: list[float]) -> tuple[float, float]:
    a = np.asarray(seconds) * 1e3
    return round(float(np.percentile(a, 50)), 3), round(float(np.percentile(a, 99)), 3)


def single(searcher: FaissCpuSearcher, q: np.ndarray, k: int, n: int, allowed: np.ndarray | None = None) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        searcher.search(q[i:i + 1], k, allowed)
        out.append(time.perf_counter() - t0)
    return out


def batched(searcher: FaissCpuSearcher, q: np.ndarray, k: int, n_batches: int, size: int = 64) -> list[float]:
    out = []
    for b in range(n_batches):
        part = q[(b * size) % len(q):][:size]
        t0 = time.perf_counter()
        searcher.search(part, k)
        out.append(time.perf_counter() - t0)
    return out


def measure(name: str, index: faiss.Index, x: np.ndarray, tune_q: np.ndarray, test_q: np.ndarray,
            kth: dict[str, np.ndarray], masks: dict[float, np.ndarray], a: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"bytes_per_item": round(index_bytes(index) / len(x), 1)}
    t0 = time.perf_counter()
    # PQ codes are served with an exact re-rank of RERANK_FACTOR * k candidates (index/build.py),
    # so they are tuned and measured that way; --no-rerank measures the raw codes.
    rerank = RERANK_FACTOR if faiss.downcast_index(index).__class__.__name__.endswith("PQ") and a.rerank else 0
    tuned = tune_search_params(index, x, tune_q, k=10, target=0.95, max_queries=len(tune_q), kth=kth["tune"],
                               rerank=rerank)
    params = {**tuned.params, **({"rerank": rerank} if rerank else {})}
    row |= {"params": params, "tune_s": round(time.perf_counter() - t0, 1), "tune_reached": tuned.reached}
    searcher = FaissCpuSearcher(index, x, params)
    if tuned.params:  # an exact index has recall 1 by construction: no need to scan n x Q again
        found = np.vstack([searcher.search(test_q[s:s + 256], 10).rows for s in range(0, len(test_q), 256)])
        row["recall@10"] = round(ann_recall(x, test_q, found, kth["test"]), 4)
    else:
        row["recall@10"] = 1.0
    n_single = a.single_queries
    for k in (10, 100):
        single(searcher, test_q, k, 10)  # warm caches
        row[f"single_k{k}_p50_ms"], row[f"single_k{k}_p99_ms"] = pct(single(searcher, test_q, k, n_single))
        row[f"batch64_k{k}_p50_ms"], _ = pct(batched(searcher, test_q, k, a.batches))
    base = np.median(single(searcher, test_q, 10, n_single)) * 1e3
    for sel, mask in masks.items():
        t = single(searcher, test_q, 10, n_single, mask)
        got = np.vstack([searcher.search(test_q[i:i + 1], 10, mask).rows for i in range(50)])
        want = exact_subset(x, np.flatnonzero(mask), test_q[:50], 10).rows
        rec = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
        path = "exact subset" if mask.sum() <= EXACT_SUBSET_MAX else "IDSelector"
        row[f"filter_{sel:g}"] = {"p50_ms": pct(t)[0], "overhead_x": round(pct(t)[0] / base, 2),
                                  "recall@10": round(float(rec), 3), "path": path}
    print(f"  {name}: {json.dumps(row)}", flush=True)
    return row


def run_size(n: int, mix: RotatedMixture, qmix: RotatedMixture, a: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    x = mix.sample(n, seed=a.seed)  # (n, d)
    q = qmix.sample(2 * a.queries, seed=a.seed + 1)  # (2Q, d)
    tune_q, test_q = q[:a.queries], q[a.queries:]
    kth = {"tune": exact_topk(x, tune_q, 10)[0][:, -1], "test": exact_topk(x, test_q, 10)[0][:, -1]}  # (Q,) each
    rng = np.random.default_rng(a.seed + 2)
    masks = {s: rng.random(n) < s for s in SELECTIVITIES}
    nlist = a.nlist or nlist_for(n)
    train_n = min(n, a.train_per_list * nlist)
    print(f"n={n}: data + ground truth {time.perf_counter() - t0:.1f}s; nlist={nlist}, IVF trained on {train_n} "
          f"vectors, PQ on {a.pq_train}, {a.kmeans_iters} k-means iterations; loadavg {os.getloadavg()[0]:.1f}",
          flush=True)
    out: dict[str, Any] = {"n": n, "nlist": nlist, "nlist_rule": nlist_for(n), "train_n": train_n, "families": {}}
    shared: SharedIVF | None = None
    for key in a.families.split(";"):
        key = key.replace("NLIST", str(nlist))
        gc.collect()
        if key.startswith("HNSW"):
            index, seconds, complete = build_hnsw(x, a.hnsw_budget_s)
            if not complete:
                rate = index.ntotal / seconds
                out["families"][key] = {"partial": True, "built": int(index.ntotal), "add_per_s": round(rate),
                                        "build_s_extrapolated": round(n / rate), "bytes_per_item_est":
                                        round(index_bytes(index) / index.ntotal, 1)}
                print(f"  {key}: stopped after {seconds:.0f}s at {index.ntotal} vectors", flush=True)
                del index
                continue
        elif key.startswith("IVF"):
            shared = shared or SharedIVF(x, nlist, train_n, a.kmeans_iters, a.seed)
            index, seconds = shared.build(key, x, a.kmeans_iters, a.pq_train)
        else:
            t0 = time.perf_counter()
            index = faiss.index_factory(x.shape[1], key, faiss.METRIC_INNER_PRODUCT)
            index.add(x)
            seconds = time.perf_counter() - t0
        row = {"build_s": round(seconds, 1)} | measure(key, index, x, tune_q, test_q, kth, masks, a)
        out["families"][key] = row
        del index
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    head = ("| n | index | build s | bytes/item | tuned | recall@10 | 1 query k=10 p50/p99 ms | k=100 p50/p99 ms "
            "| batch 64 k=10 / k=100 ms | filter 10% / 1% / 0.1% (x unfiltered) |")
    lines = [head, "|" + " --- |" * 10]
    for r in results:
        for key, f in r["families"].items():
            if f.get("partial"):
                lines.append(f"| {r['n']:,} | {key} | >{f['build_s_extrapolated']:,} (extrapolated from "
                             f"{f['built']:,} added at {f['add_per_s']:,}/s) | ~{f['bytes_per_item_est']} "
                             "| not measured | | | | | |")
                continue
            params = ", ".join(f"{k}={v}" for k, v in f["params"].items()) or "exact"
            filt = " / ".join(f"{f[f'filter_{s:g}']['overhead_x']}" for s in SELECTIVITIES)
            lines.append(f"| {r['n']:,} | {key} | {f['build_s']} | {f['bytes_per_item']} | {params} | {f['recall@10']} "
                         f"| {f['single_k10_p50_ms']} / {f['single_k10_p99_ms']} | {f['single_k100_p50_ms']} / "
                         f"{f['single_k100_p99_ms']} | {f['batch64_k10_p50_ms']} / {f['batch64_k100_p50_ms']} | {filt} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--families", default="Flat;HNSW32,Flat;IVFNLIST,Flat;IVFNLIST,PQ64x8np",
                    help="index_factory keys separated by ';'; NLIST is replaced by the size rule")
    ap.add_argument("--source", type=Path, default=Path("var/artifacts"))
    ap.add_argument("--sample", type=Path, default=Path("var/sample"))
    ap.add_argument("--components", type=int, default=64, help="mixture components for the item vectors")
    ap.add_argument("--queries", type=int, default=500, help="tuning queries (and as many test queries)")
    ap.add_argument("--single-queries", type=int, default=200, help="one-at-a-time searches per latency figure")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--train-per-list", type=int, default=32)
    ap.add_argument("--kmeans-iters", type=int, default=10)
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (0: index/build.py's rule for the size)")
    ap.add_argument("--pq-train", type=int, default=8192, help="vectors each PQ sub-quantiser trains on")
    ap.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads")
    ap.add_argument("--real-queries", type=int, default=1500, help="sample queries encoded to fit the query mixture")
    ap.add_argument("--hnsw-budget-s", type=float, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-rerank", dest="rerank", action="store_false",
                    help="measure PQ codes without the exact re-rank the service applies")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    faiss.omp_set_num_threads(a.threads)
    t0 = time.perf_counter()
    real_items, real_q, version = real_vectors(a.source, a.sample, a.real_queries, a.seed)
    mix = RotatedMixture(real_items, a.components, a.seed)
    qmix = RotatedMixture(real_q, max(4, a.components // 4), a.seed)
    fid = fidelity(real_items, real_q, mix.sample(len(real_items), a.seed + 7), qmix.sample(len(real_q), a.seed + 8))
    print(f"source {a.source}/{version}: {len(real_items)} real vectors, {len(real_q)} real queries; "
          f"fit {time.perf_counter() - t0:.1f}s; fidelity {json.dumps(fid)}", flush=True)
    results = [run_size(int(n), mix, qmix, a) for n in a.sizes.split(",")]
    report = {"machine": machine(), "source_version": version, "fidelity": fid, "args": {k: str(v) for k, v in vars(a).items()},
              "results": results}
    print(markdown(results))
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
