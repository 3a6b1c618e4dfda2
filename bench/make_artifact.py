"""Synthetic large artifacts for serving benchmarks: 100k or 1M listings, a real query encoder.

    nice -n 10 .venv/bin/python -m bench.make_artifact --source var/artifacts --sample var/sample \
        --items 100000 --out var/bench/a100k [--components 64] [--index-key auto] [--seed 0]

Item vectors are drawn from a Gaussian mixture (diagonal covariances, `--components` clusters)
fitted by EM to the source version's real fused listing vectors (vectors.npy), then L2-normalised
as the index stores them: clustered the way the trained towers cluster listings, so IVF lists,
HNSW graphs and filters see a realistic geometry. Each synthetic listing borrows the metadata
(title, category, price, attributes, image) of a real listing from its component, so filters and
responses look real too. The source's model.safetensors and tokenizer.json are copied, so the
query encoder is the real one, and the index is tuned (nprobe / efSearch) on the encoded sample
queries, as `build-index` does. The version is published to OUT/current; OUT is a separate
artifact folder (never the source).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np

from bench.common import load_queries, machine
from index.build import build_index, save_index
from index.store.artifacts import ArtifactStore
from index.store.listings import ListingRecord, write_listings
from index.store.manifest import Manifest


def _log_resp(x: np.ndarray, weights: np.ndarray, means: np.ndarray, var: np.ndarray) -> np.ndarray:
    """log w_j + log N(x | mu_j, diag var_j), (n, k), via matrix products (no (n, k, d) tensor)."""
    inv = 1.0 / var  # (k, d)
    maha = (x**2) @ inv.T - 2 * x @ (means * inv).T + (means**2 * inv).sum(1)[None]  # (n, k)
    return -0.5 * (maha + np.log(var).sum(1)[None] + x.shape[1] * np.log(2 * np.pi)) + np.log(weights)[None]


def fit_gmm(x: np.ndarray, k: int, iters: int = 30, seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Diagonal-covariance Gaussian mixture by EM from a k-means start -> (weights (k,), means
    (k, d), variances (k, d), component of each input row (n,)). Variances are floored so a
    component of few points cannot collapse."""
    import faiss

    n, d = x.shape
    km = faiss.Kmeans(d, k, niter=25, seed=seed, spherical=True, verbose=False)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    means = km.centroids.astype(np.float64)  # (k, d)
    xd = x.astype(np.float64)
    var = np.full((k, d), xd.var(0).mean())  # (k, d)
    weights = np.full(k, 1.0 / k)  # (k,)
    floor = 1e-4 * xd.var(0).mean()
    for _ in range(iters):
        logp = _log_resp(xd, weights, means, var)  # (n, k) E step
        logp -= logp.max(1, keepdims=True)
        resp = np.exp(logp)
        resp /= resp.sum(1, keepdims=True)  # (n, k)
        nk = resp.sum(0) + 1e-9  # (k,) M step
        weights = nk / nk.sum()
        means = (resp.T @ xd) / nk[:, None]  # (k, d)
        var = np.maximum((resp.T @ xd**2) / nk[:, None] - means**2, floor)  # (k, d)
    return weights, means, var, _log_resp(xd, weights, means, var).argmax(1)


def sample_gmm(weights: np.ndarray, means: np.ndarray, var: np.ndarray, n: int, seed: int,
               chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """-> (vectors (n, d) float32 unit rows, component of each row (n,))."""
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(weights), size=n, p=weights / weights.sum())  # (n,)
    out = np.empty((n, means.shape[1]), dtype=np.float32)  # (n, d)
    for s in range(0, n, chunk):
        c = comp[s:s + chunk]
        z = rng.standard_normal((len(c), means.shape[1]))  # (m, d)
        v = means[c] + z * np.sqrt(var[c])  # (m, d)
        out[s:s + chunk] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out, comp


def records_for(listings: Path, real_assign: np.ndarray, comp: np.ndarray, seed: int):
    """Each synthetic row borrows a real listing of its component (any listing when it has none)."""
    con = sqlite3.connect(f"file:{listings}?mode=ro", uri=True)
    try:
        real = con.execute("SELECT title, image, category, price, attributes FROM listings ORDER BY row").fetchall()
    finally:
        con.close()
    rng = np.random.default_rng(seed + 1)
    members = {int(k): np.flatnonzero(real_assign == k) for k in np.unique(real_assign)}
    everyone = np.arange(len(real))
    for i, c in enumerate(comp):
        pool = members.get(int(c), everyone)
        title, image, category, price, attrs = real[int(pool[rng.integers(len(pool))])]
        yield ListingRecord(row=i, id=f"G{i:07d}", title=title, image=image, category=category, price=price,
                            attributes=json.loads(attrs))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=Path("var/artifacts"), help="artifact folder with a real version")
    ap.add_argument("--sample", type=Path, default=Path("var/sample"), help="sample catalog folder (tuning queries)")
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--out", type=Path, required=True, help="artifact folder to write (not the source)")
    ap.add_argument("--components", type=int, default=64)
    ap.add_argument("--index-key", default="auto")
    ap.add_argument("--target-recall", type=float, default=0.95, help="ANN recall@10 the tuning aims for")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.out.resolve() == a.source.resolve():
        raise SystemExit("--out must be another folder than --source")
    src_store = ArtifactStore(a.source)
    version = src_store.current_version()
    if version is None:
        raise SystemExit(f"{a.source}: no published version; build the sample artifact first")
    src = src_store.version_dir(version)
    manifest = src_store.manifest(version)
    t0 = time.perf_counter()
    real = np.load(src / "vectors.npy").astype(np.float32)  # (n, d)
    weights, means, var, real_assign = fit_gmm(real, a.components, seed=a.seed)
    vectors, comp = sample_gmm(weights, means, var, a.items, a.seed)
    t_fit = time.perf_counter() - t0

    t0 = time.perf_counter()
    built = build_index(vectors, a.index_key, seed=a.seed)
    t_index = time.perf_counter() - t0
    tuning: dict = {}
    if built.key != "Flat":
        from index.tune import tune_search_params
        from model.runtime.query_encoder import QueryEncoder

        enc = QueryEncoder(src / "model.safetensors", src / "tokenizer.json")
        queries = load_queries(a.sample, 1000, a.seed)
        qv = np.concatenate([enc.encode(queries[i:i + 64]) for i in range(0, len(queries), 64)])
        tuned = tune_search_params(built.index, vectors, qv, k=10, target=a.target_recall, seed=a.seed)
        built.params.update(tuned.params)
        tuning = tuned.to_dict()

    store = ArtifactStore(a.out)
    name = f"synthetic-{a.items}-{built.key.replace(',', '_')}-s{a.seed}"
    with store.stage(name) as staged:
        for f in ("model.safetensors", "tokenizer.json"):
            shutil.copyfile(src / f, staged.path / f)
        save_index(built.index, str(staged.path / "index.faiss"))
        np.save(staged.path / "vectors.npy", vectors.astype(np.float16))
        write_listings(staged.path / "listings.sqlite",
                       records_for(src / "listings.sqlite", real_assign, comp, a.seed))
        keep = {k: manifest[k] for k in ("objective", "model_config", "model_digest", "text_base_digest") if k in manifest}
        path = store.commit(staged, Manifest(
            **keep, created=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            n_items=a.items, dim=int(vectors.shape[1]), index_key=built.key, index_params=built.params,
            index_tuning=tuning,
            synthetic={"source_version": version, "components": a.components, "seed": a.seed,
                       "method": "diagonal GMM fitted by EM to the source's fused vectors"},
        ))
    store.publish(name)
    print(json.dumps({"machine": machine(), "version": name, "path": str(path), "items": a.items,
                      "index_key": built.key, "index_params": built.params, "fit_s": round(t_fit, 1),
                      "index_s": round(t_index, 1), "tuned_recall": tuning.get("recall")}, indent=2))


if __name__ == "__main__":
    main()
