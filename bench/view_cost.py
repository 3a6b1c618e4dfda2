"""Work per listing against its number of views: `ft` (primaries + one sampled auxiliary view)
versus `ft-allpairs` (every view, every pair).

Two layouts of a listing with V views:
  photos: title + primary photo + (V-2) more photos (every auxiliary view costs the same);
  mixed:  V=2 title + photo; V=4 adds description and tags; V=8 adds four more photos.
Photos use random (cached-like) 1280-d features through the real image heads, texts go through the
real MiniLM top layer. Reports, per listing: slots encoded, text tokens encoded, training time.

  .venv/bin/python -m bench.view_cost [--layout photos|mixed] [--items 512] [--steps 12] [--batch 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from model.checkpoint import new_model
from model.config import ModelConfig, TowerConfig, TrainConfig
from model.data.catalog import Listing
from model.data.interactions import Interaction
from model.data.views import build_view_table
from model.encoders.weights import load_text_encoder
from model.train.pairs import build_training_set
from model.train.trainer import Trainer, build_trunk

WORDS = ["red", "blue", "green", "striped", "wool", "cotton", "ceramic", "mug", "scarf", "vase", "handmade", "gift", "cozy", "soft", "bright"]


def listings(n: int, views: int, rng: np.random.Generator, layout: str) -> list[Listing]:
    out = []
    texts = layout == "mixed" and views >= 4
    for i in range(n):
        words = lambda k: " ".join(rng.choice(WORDS, k))  # noqa: E731
        n_other = max(0, views - 4) if layout == "mixed" else views - 2
        out.append(Listing(
            id=f"L{i}", title=words(5),
            description=words(40) if texts else "",
            tags=tuple(rng.choice(WORDS, 6)) if texts else (),
            images=tuple(f"/img/{i}_{j}.jpg" for j in range(1 + n_other)),
            image_slots=tuple(range(1 + n_other)),
        ))
    return out


def measure(objective: str, views: int, items: int, steps: int, batch: int, pretrained, tok,
            layout: str = "photos", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lst = listings(items, views, rng, layout)
    vt = build_view_table(lst)
    feats = rng.normal(size=(len(vt.image_paths), 1280)).astype(np.float32)
    pairs = [Interaction(" ".join(rng.choice(WORDS, 3)), x.id) for x in lst]
    cfg = ModelConfig(tower=TowerConfig(max_other_images=6))
    model = new_model(cfg, pretrained, seed)
    data = build_training_set(lst, feats, np.ones(len(feats), bool), vt, pairs, max_other_images=6)
    tcfg = TrainConfig(objective=objective, batch_size=batch, epochs=1, seed=seed)
    trunk = build_trunk(model, tok, data, torch.device("cpu"), False)
    tr = Trainer(model, data, trunk, tcfg, torch.device("cpu"))
    order = tr.epoch_order()
    tr.step(order[:batch])  # warm-up
    tr.history.encoded_slots = tr.history.encoded_tokens = 0
    start = time.perf_counter()
    for s in range(steps):
        tr.step(order[(s * batch) % (items - batch):][:batch])
    seconds = time.perf_counter() - start
    n = steps * batch
    return {"slots": tr.history.encoded_slots / n, "tokens": tr.history.encoded_tokens / n, "ms": 1000 * seconds / n}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layout", choices=["photos", "mixed"], default="photos")
    p.add_argument("--items", type=int, default=512)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=64)
    a = p.parse_args()
    torch.manual_seed(0)
    pretrained, tok, _ = load_text_encoder(None)
    rows = {}
    for objective in ("ft", "ft-allpairs"):
        for views in (2, 4, 8):
            rows[(objective, views)] = measure(objective, views, a.items, a.steps, a.batch, pretrained, tok, a.layout)
            r = rows[(objective, views)]
            print(f"{objective:12s} views={views}  slots/item={r['slots']:.2f}  tokens/item={r['tokens']:.1f}  ms/item={r['ms']:.2f}", flush=True)
    print("\n| objective | views | slots encoded / listing | text tokens / listing | ms / listing | vs 2 views |")
    print("|---|---|---|---|---|---|")
    for (objective, views), r in rows.items():
        base = rows[(objective, 2)]["ms"]
        print(f"| {objective} | {views} | {r['slots']:.2f} | {r['tokens']:.1f} | {r['ms']:.2f} | {r['ms'] / base - 1:+.0%} |")


if __name__ == "__main__":
    main()
