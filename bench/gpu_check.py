"""One prepared GPU check (issue 15, item 8): everything the GPU path promises, in one run.

    python3 -m bench.gpu_check [--out DIR] [--items 1000000] [--dim 256]    # on the GPU machine
    .venv/bin/python -m bench.gpu_check --device cpu --smoke --out /tmp/g   # here: the CPU parts, small

Runs from a fresh copy of the tree on a machine with torch (+ CUDA), onnxruntime, tokenizers and
safetensors; faiss and the web stack may be missing (docs/PERFORMANCE.md says which wheels to
carry). Weights are random, of MiniLM-L6's shapes (as the reference GPU figures in docs/PERFORMANCE.md), with a
generated WordPiece vocabulary: nothing is downloaded. Sections, each reported even when skipped:
  gpu_tests      `pytest -m gpu` over tests/ (skipped in --smoke);
  graph_parity   the CUDA-graph encoder (fp16) against the fp32 module (min cosine on the probe
                 queries, the load-time check) and against eager fp16, and a capture in a second
                 thread while the first keeps the GPU busy (a hot reload);
  search_exact   TorchCudaSearcher (index/torch_search.py alone when faiss is missing) on
                 items x dim vectors against a reference (faiss IndexFlatIP when importable, else an
                 exact fp32 torch scan): tie-aware recall@100, max score error, latency per batch;
  encode_search  batch-1 and batch-64 latency of encode + search;
  load           bench/load.py against the items-vector artifact served by `service serve`
                 (p50/p99 at concurrency 1 and 64, QPS), when fastapi, uvicorn and faiss import.
Writes gpu_check.json and gpu_check.md under --out (default $OUT, else var/gpu_check).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index.torch_search import TorchExact  # no faiss import
from model.config import ModelConfig, TowerConfig
from model.encoders.text import BertConfig
from model.sample.catalog import CATEGORIES, COLORS

ROOT = Path(__file__).resolve().parent.parent
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, reps: int, warm: int = 3) -> dict[str, float]:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"p50_ms": round(1e3 * statistics.median(times), 4),
            "p99_ms": round(1e3 * times[min(len(times) - 1, int(0.99 * len(times)))], 4), "reps": reps}


def shopper_queries(n: int) -> list[str]:
    """Distinct queries over the synthetic catalog's vocabulary, fixed order."""
    out: dict[str, None] = {}
    for color, cat in itertools.product(sorted(COLORS), sorted(CATEGORIES)):
        out[f"{color} {cat}"] = None
        for m in CATEGORIES[cat].materials:
            out[f"{color} {m} {cat}"] = None
    return list(out)[:n]


def write_random_model(folder: Path, smoke: bool, seed: int = 0) -> tuple[Path, Path, str]:
    """model.safetensors (random weights; MiniLM-L6 shapes unless smoke) and a generated tokenizer.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    from model.checkpoint import save_model
    from model.towers import TwoTower

    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for q in shopper_queries(10_000) for w in q.split()})
    vocab = {t: i for i, t in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(folder / "tokenizer.json"))
    bert = BertConfig(hidden=64, n_layers=2, n_heads=4, intermediate=128) if smoke else BertConfig()
    torch.manual_seed(seed)
    model = TwoTower(ModelConfig(tower=TowerConfig(dim=32 if smoke else 256)), bert)
    digest = save_model(model, folder / "model.safetensors")
    return folder / "model.safetensors", folder / "tokenizer.json", digest


def unit_vectors(n: int, d: int, device: torch.device, seed: int = 0) -> np.ndarray:
    """(n, d) fp16 clustered unit vectors, made on the device, as vectors.npy holds them."""
    g = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn((64, d), generator=g, device=device)
    out = np.empty((n, d), dtype=np.float16)
    for s in range(0, n, 262_144):
        m = min(262_144, n - s)
        pick = torch.randint(0, 64, (m,), generator=g, device=device)
        x = centres[pick] + 0.7 * torch.randn((m, d), generator=g, device=device)
        out[s:s + m] = torch.nn.functional.normalize(x, dim=1).half().cpu().numpy()
    return out


# ---------------------------------------------------------------------------------------- sections


def gpu_tests(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {"status": "skipped", "why": "--smoke"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-o", "addopts=", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", "tests"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    lines = [x for x in r.stdout.splitlines() if x.strip()]
    return {"status": "passed" if r.returncode == 0 else f"rc {r.returncode}", "summary": lines[-1] if lines else "",
            "tail": lines[-25:], "seconds": round(time.perf_counter() - t0, 1)}


def graph_parity(weights: Path, tokenizer: Path, device: torch.device) -> tuple[dict[str, Any], Any]:
    from model.runtime.cuda_graphs import eager_capture
    from model.runtime.query_encoder import PROBE_MIN_COSINE, EncoderOptions, QueryEncoder

    capture = None if device.type == "cuda" else eager_capture  # CPU: the eager stand-in runs the same check
    opts = EncoderOptions(backend="torch", cuda_graphs=True, max_batch=64)
    enc = QueryEncoder(weights, tokenizer, device, opts, capture=capture)
    eager = QueryEncoder(weights, tokenizer, device, EncoderOptions(backend="torch", cuda_graphs=False, max_batch=64))
    qs = shopper_queries(256)
    a = np.concatenate([enc.encode(qs[i:i + 64]) for i in range(0, len(qs), 64)])
    b = np.concatenate([eager.encode(qs[i:i + 64]) for i in range(0, len(qs), 64)])
    out: dict[str, Any] = {"runtime": enc.describe, "probe_min_cosine_vs_fp32": enc.graph_min_cosine,
                           "bar": PROBE_MIN_COSINE["graphs"], "graph_vs_eager_min_cosine": float((a * b).sum(1).min())}
    # a hot reload: capture in a thread while this one keeps the device busy
    stop, errors = threading.Event(), []
    x = torch.randn((2048, 256), device=device)

    def busy() -> None:
        try:
            while not stop.is_set():
                enc.encode(qs[:4])
                float((x @ x.T).sum())
        except Exception as e:  # noqa: BLE001 - reported
            errors.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=busy)
    t.start()
    try:
        t0 = time.perf_counter()
        again = QueryEncoder(weights, tokenizer, device, opts, capture=capture)
        out["capture_under_load_s"] = round(time.perf_counter() - t0, 2)
        out["capture_under_load_min_cosine"] = again.graph_min_cosine
    except Exception as e:  # noqa: BLE001 - reported
        errors.append(f"capture: {type(e).__name__}: {e}")
    finally:
        stop.set()
        t.join()
    out["capture_under_load_errors"] = errors
    out["status"] = "passed" if not errors and (enc.graph_min_cosine or 0) >= PROBE_MIN_COSINE["graphs"] else "failed"
    return out, enc


def reference_topk(vectors: np.ndarray, q: np.ndarray, k: int, device: torch.device) -> tuple[np.ndarray, str]:
    """Exact fp32 top-k scores (Q, k): faiss IndexFlatIP when importable, else a torch fp32 scan."""
    if has("faiss"):
        import faiss

        index = faiss.IndexFlatIP(vectors.shape[1])
        for s in range(0, len(vectors), 262_144):
            index.add(np.asarray(vectors[s:s + 262_144], dtype=np.float32))
        return index.search(q, k)[0], "faiss IndexFlatIP (fp32)"
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = TorchExact(vectors, device, storage=torch.float32)
    rows = ref.topk_rows(q, k)
    return np.einsum("qd,qkd->qk", q, vectors[rows].astype(np.float32)), "torch fp32 exact scan (faiss missing)"


def search_exact(vectors: np.ndarray, device: torch.device, smoke: bool) -> tuple[dict[str, Any], Any]:
    n, d = vectors.shape
    k = 100
    q = vectors[np.random.default_rng(1).choice(n, 64, replace=False)].astype(np.float32)
    q = q + np.random.default_rng(2).normal(0, 0.05, q.shape).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    if has("faiss"):
        from index.search import TorchCudaSearcher

        searcher: Any = TorchCudaSearcher(vectors, str(device))
        engine = searcher.engine

        def rows_of(qq: np.ndarray, kk: int) -> np.ndarray:
            return searcher.search(qq, kk).rows
        path = "TorchCudaSearcher"
    else:
        engine = searcher = TorchExact(vectors, device)

        def rows_of(qq: np.ndarray, kk: int) -> np.ndarray:
            return engine.topk_rows(qq, kk)
        path = "index.torch_search.TorchExact (faiss missing)"
    t0 = time.perf_counter()
    ref_s, ref_name = reference_topk(vectors, q, k, device)
    ref_s_time = time.perf_counter() - t0
    rows = rows_of(q, k)  # (Q, k)
    got = np.einsum("qd,qkd->qk", q, vectors[np.maximum(rows, 0)].astype(np.float32))
    recall = float((got >= ref_s[:, -1:] - 1e-6).mean())
    out: dict[str, Any] = {"items": n, "dim": d, "k": k, "path": path, "scores": engine.mode, "reference": ref_name,
                           "reference_s": round(ref_s_time, 2), "recall_at_100_tie_aware": recall,
                           "max_abs_score_error": float(np.abs(np.sort(got, 1)[:, ::-1] - ref_s).max()),
                           "latency_top100": {}}
    reps = 5 if smoke else 50
    for b in (1, 64, 1024):
        qb = np.resize(q, (b, d)).astype(np.float32)
        out["latency_top100"][f"batch_{b}"] = timed(lambda qb=qb: rows_of(qb, k), device, reps if b < 1024 else 10)
    allowed = np.random.default_rng(3).random(n) < 0.3
    out["filtered_batch_64"] = timed(lambda: rows_of_f(engine, searcher, q, allowed), device, reps)
    out["mask_uploads_for_repeated_filter"] = engine.masks.uploads
    out["status"] = "passed" if recall >= 0.999 and engine.masks.uploads == 1 else "failed"
    return out, searcher


def rows_of_f(engine: Any, searcher: Any, q: np.ndarray, allowed: np.ndarray) -> Any:
    return searcher.search(q, 10, allowed) if searcher is not engine else engine.topk_rows(q, 10, allowed)


def encode_search(enc: Any, searcher: Any, device: torch.device, smoke: bool) -> dict[str, Any]:
    qs = shopper_queries(64)
    search = searcher.search if hasattr(searcher, "placement") else (lambda v, k: searcher.topk_rows(v, k))
    out = {}
    for b in (1, 64):
        out[f"batch_{b}_top10"] = timed(lambda b=b: search(enc.encode(qs[:b]), 10), device, 5 if smoke else 100)
    return out


def write_artifact(folder: Path, vectors: np.ndarray, weights: Path, tokenizer: Path, digest: str) -> tuple[Path, str]:
    """A published artifact over `vectors` (Flat index, generated listings) and a sample folder."""
    import shutil

    from index.build import build_index, save_index
    from index.store.artifacts import ArtifactStore
    from index.store.listings import ListingRecord, write_listings
    from index.store.manifest import Manifest

    store = ArtifactStore(folder / "artifacts")
    name = f"gpu-check-{len(vectors)}"
    built = build_index(np.asarray(vectors, dtype=np.float32), "Flat")
    cats = sorted(CATEGORIES)
    with store.stage(name) as staged:
        shutil.copyfile(weights, staged.path / "model.safetensors")
        shutil.copyfile(tokenizer, staged.path / "tokenizer.json")
        save_index(built.index, str(staged.path / "index.faiss"))
        np.save(staged.path / "vectors.npy", vectors)
        write_listings(staged.path / "listings.sqlite", (
            ListingRecord(i, f"L{i}", f"listing {i}", None, cats[i % len(cats)], float(i % 500), {})
            for i in range(len(vectors))))
        store.commit(staged, Manifest(objective="ft", model_digest=digest, n_items=len(vectors),
                                      dim=int(vectors.shape[1]), index_key="Flat", index_params={}, index_tuning={},
                                      synthetic={"by": "bench/gpu_check.py"}))
    store.publish(name)
    sample = folder / "sample"
    sample.mkdir(exist_ok=True)
    with open(sample / "judgments.jsonl", "w") as f:
        for i, q in enumerate(shopper_queries(2000)):
            f.write(json.dumps({"query": q, "item_id": f"L{i}", "relevance": 1}) + "\n")
    return folder / "artifacts", name


def load_section(folder: Path, vectors: np.ndarray, weights: Path, tokenizer: Path, digest: str, smoke: bool,
                 device: torch.device) -> dict[str, Any]:
    if not has("fastapi", "uvicorn", "faiss", "pydantic_settings"):
        missing = [m for m in ("fastapi", "uvicorn", "faiss", "pydantic_settings") if not has(m)]
        return {"status": "skipped", "why": f"not importable: {', '.join(missing)} (carry the wheels, "
                "docs/PERFORMANCE.md)"}
    t0 = time.perf_counter()
    artifacts, name = write_artifact(folder, vectors, weights, tokenizer, digest)
    out: dict[str, Any] = {"artifact": name, "write_s": round(time.perf_counter() - t0, 1)}
    if smoke:  # the artifact is servable: loaded in process, no server started
        from service.serving.engine import load_version
        from service.serving.settings import Settings

        lv = load_version(Settings(artifacts=artifacts, index_device="cpu", encoder_device=str(device),
                                   placed_recall_queries=20))
        out.update(status="loaded", items=lv.n_items, ann_recall=lv.ann_recall)
        return out
    env = {"SERVICE_INDEX_DEVICE": "auto", "SERVICE_MAX_BATCH": "64"}
    cmd = [sys.executable, "-m", "bench.load", "--artifacts", str(artifacts), "--sample", str(folder / "sample"),
           "--concurrency", "1,64", "--requests", "2000"] + [x for k, v in env.items() for x in ("--env", f"{k}={v}")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    levels = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    out.update(status="passed" if r.returncode == 0 and levels else f"rc {r.returncode}", levels=levels,
               stderr_tail=r.stderr.splitlines()[-15:])
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["sections"]
    rows = [("device", report["device"]), ("gpu tests", s["gpu_tests"].get("summary") or s["gpu_tests"]["status"])]
    g = s["graph_parity"]
    rows.append(("graph encoder min cosine vs fp32 (bar)", f"{g.get('probe_min_cosine_vs_fp32')} ({g.get('bar')})"))
    rows.append(("capture while serving", "ok" if not g.get("capture_under_load_errors") else "errors"))
    e = s["search_exact"]
    rows.append((f"exact search {e['items']:,}x{e['dim']} recall@100 / max score error",
                 f"{e['recall_at_100_tie_aware']:.4f} / {e['max_abs_score_error']:.2e} ({e['scores']}, vs {e['reference']})"))
    for b, t in e["latency_top100"].items():
        rows.append((f"search top-100 {b.replace('_', ' ')} p50 / p99 ms", f"{t['p50_ms']} / {t['p99_ms']}"))
    for b, t in s["encode_search"].items():
        rows.append((f"encode+search {b.replace('_', ' ')} p50 / p99 ms", f"{t['p50_ms']} / {t['p99_ms']}"))
    ld = s["load"]
    for lv in ld.get("levels", []):
        if "concurrency" not in lv:  # the header line (machine, url, items)
            continue
        lat = lv.get("latency_ms", {})
        rows.append((f"load.py concurrency {lv['concurrency']} p50 / p99 ms, QPS",
                     f"{lat.get('p50')} / {lat.get('p99')}, {lv.get('qps')}"))
    if not ld.get("levels"):
        placed = (ld.get("ann_recall") or {}).get("as_placed") or {}
        rows.append(("load.py", f"{ld['status']} {ld.get('why', '')}".strip()
                     + (f" (as-placed recall@{placed['k']} {placed['recall']})" if placed else "")))
    return "| check | result |\n| --- | --- |\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda | cpu")
    ap.add_argument("--smoke", action="store_true", help="small sizes, no pytest run, no server: the CPU parts")
    ap.add_argument("--items", type=int, help="vectors searched (default 1,000,000; 20,000 with --smoke)")
    ap.add_argument("--dim", type=int, help="vector width (default 256; the random tower's 32 with --smoke)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "var" / "gpu_check"))
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (use --device cpu --smoke here)")
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.out / "work" if a.smoke else Path("/tmp/gpu_check_work")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    weights, tokenizer, digest = write_random_model(work / "model", a.smoke)
    dim = a.dim or (32 if a.smoke else 256)
    vectors = unit_vectors(a.items or (20_000 if a.smoke else 1_000_000), dim, device)
    sections: dict[str, Any] = {"gpu_tests": gpu_tests(a.smoke)}
    sections["graph_parity"], enc = graph_parity(weights, tokenizer, device)
    sections["search_exact"], searcher = search_exact(vectors, device, a.smoke)
    sections["encode_search"] = (encode_search(enc, searcher, device, a.smoke) if enc.dim == dim
                                 else {"status": "skipped", "why": f"--dim {dim} is not the tower's {enc.dim}"})
    del searcher
    if device.type == "cuda":
        torch.cuda.empty_cache()
    sections["load"] = load_section(work, vectors, weights, tokenizer, digest, a.smoke, device)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "python": sys.version.split()[0], "smoke": a.smoke,
              "seconds": round(time.perf_counter() - t0, 1), "sections": sections}
    (a.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (a.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    failed = [k for k, v in sections.items() if str(v.get("status", "")).startswith(("failed", "rc"))]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
