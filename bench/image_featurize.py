"""Image backbone speed and sanity: network images/s per backend, end-to-end featurize, ImageNet check.

    .venv/bin/python -m bench.image_featurize [--size 224] [--batch-size 32] [--rounds 5]

1. Network only, random inputs: torch unfused, torch BN-folded (NCHW and channels_last), and the
   exported folded network on onnxruntime CPU (intra-op threads = torch.get_num_threads()).
2. End to end on the real IKEA product photos (/work/shared/data/ikea, not in the repo; skipped with
   a message when missing): decode + preprocess + network, no cache, per backend.
3. Sanity of the input scaling on those photos: how often the ImageNet top-5 has a chair class for
   'Chair' listings and a lamp class for lamp listings, with [-1, 1] scaling (ImageConfig) versus
   ImageNet mean/std scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from model.config import ImageConfig
from model.encoders.image import EfficientNetLite0, export_onnx
from model.encoders.image_features import ImageFeaturizer
from model.encoders.photos import load_image
from model.encoders.weights import weights_file

IKEA = Path("/work/shared/data/ikea")
# ImageNet-1k class indices: 423 barber chair, 559 folding chair, 765 rocking chair, 857 throne;
# 619 lampshade, 846 table lamp.
CHAIRS, LAMPS = {423, 559, 765, 857}, {619, 846}
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def network(size: int, batch: int, rounds: int) -> None:
    """Backends timed in turn, one batch each per round, median over rounds: fair on a busy machine."""
    model = EfficientNetLite0.from_file(weights_file(ImageConfig()))
    fused = model.fused()
    fused_cl = model.fused().to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (B, 3, S, S)
    xcl, xn = x.contiguous(memory_format=torch.channels_last), x.numpy()
    runs: dict[str, Callable[[], object]] = {
        "torch unfused": lambda: model(x),
        "torch fused": lambda: fused(x),
        "torch fused channels_last": lambda: fused_cl(xcl),
    }
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = torch.get_num_threads(), 1
        sess = ort.InferenceSession(export_onnx(fused, size), opts, providers=["CPUExecutionProvider"])
        runs["onnxruntime (fused export)"] = lambda: sess.run(None, {"image": xn})
    except ImportError:
        print("onnxruntime not installed: onnx row skipped")
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for r in range(rounds + 1):
            for name, fn in runs.items():
                time.sleep(0.5)  # let the previous backend's OpenMP threads stop spinning
                t0 = time.perf_counter()
                fn()
                if r:  # round 0 is the warm-up
                    times[name].append(time.perf_counter() - t0)
    print(f"\nnetwork only, {size}px, batch {batch}, median of {rounds} rounds, "
          f"threads={torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'backend':<30} {'images/s':>9} {'ms/image':>9}")
    for name, ts in times.items():
        ips = batch / statistics.median(ts)
        print(f"{name:<30} {ips:>9.1f} {1e3 / ips:>9.2f}")


def end_to_end(size: int, batch: int, n: int) -> list[Path]:
    paths = sorted((IKEA / "images" / "products").glob("*.jpg"))[:n]
    print(f"\nend to end (read + decode + preprocess + network, no cache), {len(paths)} IKEA photos")
    for backend in ("torch", "onnx"):
        feat = ImageFeaturizer(ImageConfig(image_size=size), batch_size=batch, backend=backend)
        t0 = time.perf_counter()
        res = feat.featurize(paths)
        dt = time.perf_counter() - t0
        t1 = time.perf_counter()
        for p in paths:
            load_image(p, size)
        prep = time.perf_counter() - t1
        print(f"{backend:<8} {len(paths) / dt:7.1f} images/s   ok={int(res.ok.sum())}/{len(paths)}   "
              f"(preprocessing alone {len(paths) / prep:.0f} images/s)")
    return paths


def imagenet_sanity(size: int) -> None:
    rows = [json.loads(line) for line in (IKEA / "catalog.jsonl").open()]
    groups = {"Chair": CHAIRS, "Pendant lamp": LAMPS, "Table lamp": LAMPS, "Floor lamp": LAMPS}
    model = EfficientNetLite0.from_file(weights_file(ImageConfig())).fused()
    print(f"\nImageNet top-5 sanity on IKEA product photos ({size}px)")
    print(f"{'category':<14} {'n':>3} {'[-1,1] hit':>10} {'ImageNet mean/std hit':>22}")
    for cat, classes in groups.items():
        paths = [IKEA / r["images"][0] for r in rows if r.get("category") == cat and r.get("images")]
        paths = [p for p in paths if p.exists()]
        if not paths:
            continue
        unit = np.stack([load_image(p, size, mean=0.0, std=1.0) for p in paths])  # (n, 3, S, S) in [0, 1]
        hits = []
        for x in (unit * 2 - 1, (unit - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]):
            with torch.inference_mode():
                top5 = model.logits(torch.from_numpy(x.astype(np.float32))).topk(5).indices  # (n, 5)
            hits.append(np.mean([bool(classes & set(t.tolist())) for t in top5]))
        print(f"{cat:<14} {len(paths):>3} {hits[0]:>10.0%} {hits[1]:>22.0%}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n-photos", type=int, default=256, help="IKEA photos for the end-to-end run")
    args = ap.parse_args(argv)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()}")
    network(args.size, args.batch_size, args.rounds)
    if not (IKEA / "catalog.jsonl").exists():
        print(f"\n{IKEA} not found: end-to-end and ImageNet sanity skipped")
        return
    end_to_end(args.size, args.batch_size, args.n_photos)
    imagenet_sanity(args.size)


if __name__ == "__main__":
    main()
