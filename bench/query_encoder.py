"""Query encoder backends: latency at batch 1 and parity with the fp32 torch reference.

    .venv/bin/python -m bench.query_encoder --artifacts var/artifacts --sample var/sample \
        [--queries 1000] [--threads 2] [--backends torch,onnx,int8] [--repeat 300]

For each backend (see model/runtime/query_encoder.py; `int8-dynamic` is the per-column int8 plan that was
measured and not kept): p50/p95 latency of one 8-token query (the
8-token query padded to its length bucket, as the service runs it, and at its exact length), a
batch of 32, and, against the fp32 torch encoder on >= 1,000 distinct sample queries: cosine
statistics and the mean top-10 overlap on the artifact's own index. The CPU default
(`CPU_AUTO`) is the fastest backend that keeps >= 0.95 top-10 overlap. One JSON line per backend.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import load_queries, machine, percentiles_ms
from index.build import load_index
from index.store.artifacts import ArtifactStore
from model.runtime.query_encoder import EncoderOptions, QueryEncoder

QUERY_8 = "red leather crossbody bag strap"  # 8 tokens with [CLS] and [SEP]
# Quantisation plans measured for comparison but not offered as backends (model/runtime/onnx_query.py).
ALTERNATIVES = {"int8-dynamic": {"qkv": "dynamic", "attn_out": "dynamic", "ffn_in": "dynamic", "ffn_out": "dynamic"}}


def timed(fn, repeat: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def encode_all(enc: QueryEncoder, queries: list[str], batch: int = 32) -> np.ndarray:
    return np.concatenate([enc.encode(queries[i:i + batch]) for i in range(0, len(queries), batch)])  # (N, d)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=Path("var/artifacts"))
    ap.add_argument("--sample", type=Path, default=Path("var/sample"))
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backends", default="torch,onnx,int8,int8-dynamic",
                    help="torch, onnx, int8, and int8-dynamic (per-column DynamicQuantizeMatMul, not a backend)")
    ap.add_argument("--repeat", type=int, default=300)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    store = ArtifactStore(a.artifacts)
    version = store.current_version()
    if version is None:
        raise SystemExit(f"{a.artifacts}: no published version (build the sample artifact first)")
    folder = store.version_dir(version)
    queries = load_queries(a.sample, a.queries)
    index = load_index(str(folder / "index.faiss"))
    print(json.dumps({"machine": machine(), "version": version, "n_items": index.ntotal, "queries": len(queries),
                      "threads": a.threads}))

    ref_enc = QueryEncoder(folder / "model.safetensors", folder / "tokenizer.json", "cpu")
    ref = encode_all(ref_enc, queries)  # (N, d)
    _, ref_top = index.search(ref, 10)  # (N, 10)
    del ref_enc
    for backend in a.backends.split(","):
        variant = ALTERNATIVES.get(backend)
        enc = QueryEncoder(folder / "model.safetensors", folder / "tokenizer.json", "cpu",
                           EncoderOptions(backend="int8" if variant else backend, threads=a.threads))
        if variant:  # a measured alternative that is not a backend: swap its session in
            from model.runtime.onnx_query import OnnxQueryRunner, export_query_onnx

            ref_tower = QueryEncoder(folder / "model.safetensors", folder / "tokenizer.json", "cpu")
            enc._onnx = OnnxQueryRunner(export_query_onnx(ref_tower.encoder, ref_tower.proj, plan=variant), enc.dim,
                                        a.threads)
            enc.backend = backend
        ids, mask = enc.tokenize([QUERY_8])
        exact = (ids[:, :int(mask.sum())].copy(), mask[:, :int(mask.sum())].copy())  # (1, 8)
        padded = (ids.copy(), mask.copy())  # (1, 16)
        got = encode_all(enc, queries)
        _, top = index.search(got, 10)
        overlap = np.mean([len(set(a_) & set(b_)) / 10 for a_, b_ in zip(ref_top, top, strict=True)])
        cos = (ref * got).sum(1)  # (N,)
        batch32 = queries[:32]
        run_tokens = enc.encode_tokens
        run_text = enc.encode
        row = {
            "backend": enc.describe,
            "b1_bucket_ms": percentiles_ms(timed(lambda f=run_tokens, p=padded: f(*p), a.repeat)),
            "b1_exact8_ms": percentiles_ms(timed(lambda f=run_tokens, e=exact: f(*e), a.repeat)),
            "b1_with_tokenize_ms": percentiles_ms(timed(lambda f=run_text: f([QUERY_8]), a.repeat)),
            "b32_ms": percentiles_ms(timed(lambda f=run_text, b=batch32: f(b), max(20, a.repeat // 10), 3)),
            "top10_overlap": round(float(overlap), 4),
            "cosine": {"min": round(float(cos.min()), 5), "p1": round(float(np.percentile(cos, 1)), 5),
                       "mean": round(float(cos.mean()), 6)},
            "loadavg_1m": machine()["loadavg_1m"],
        }
        print(json.dumps(row))


if __name__ == "__main__":
    main()
