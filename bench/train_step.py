"""What one training step costs on Home Depot, per training-speed setting (counted and timed here).

    nice -n 5 .venv/bin/python -m bench.train_step [--pairs 4096] [--steps 12]

Reads ../shared/data/homedepot and the split of bench/realdata/homedepot.py (run its `split`
step first). A fixed seeded subset of the training pairs (the catalog's titles of those pairs
only), batch 128, `ft`, CPU. Settings, each against the default (1 trainable layer on top of the
cached frozen trunk, titles cut at 48 tokens, in-batch negatives only):

- `trainable_layers=6`: no trunk cache, all six MiniLM layers run forward and backward each step;
- `max_title_tokens=128`: titles padded/cut like descriptions;
- `hard_negatives=1`: one mined negative per pair (its title through the top layer too);
- `amp` is what the CPU offers (bf16 autocast only with AVX512-BF16/AMX; reported, not varied).

Reports the trunk-cache build time (once per run: every unique text through the frozen layers) and
the median step time of `--steps` steps after two warm-up steps, with the machine line and date.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import machine

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "homedepot"
SPLIT = Path("var/realdata/homedepot/split/train_interactions.jsonl")


def run(setting: str, pairs: int, steps: int) -> dict[str, float]:
    from model.checkpoint import new_model
    from model.config import ModelConfig, TextConfig, TrainConfig
    from model.data.catalog import load_catalog
    from model.data.interactions import load_interactions
    from model.data.views import build_view_table
    from model.encoders.weights import load_text_encoder
    from model.train.pairs import build_training_set
    from model.train.trainer import Trainer, autocast_enabled, build_trunk, seed_everything

    key, _, value = setting.partition("=")
    listings = load_catalog(DATA / "catalog.jsonl").listings
    interactions, _ = load_interactions(SPLIT, {x.id for x in listings})
    rng = np.random.default_rng(0)
    picked = [interactions[i] for i in sorted(rng.choice(len(interactions), min(pairs, len(interactions)),
                                                         replace=False))]
    keep = {it.item_id for it in picked}
    listings = [x for x in listings if x.id in keep]
    text = TextConfig()
    tcfg = TrainConfig(objective="ft", device="cpu", seed=0)
    if key == "trainable_layers":
        text = dataclasses.replace(text, trainable_layers=int(value))
    elif key == "max_title_tokens":
        text = dataclasses.replace(text, max_title_tokens=int(value))
    elif key == "hard_negatives":
        tcfg = dataclasses.replace(tcfg, hard_negatives=int(value))
    seed_everything(0)
    pretrained, tokenizer, _ = load_text_encoder(None)
    model = new_model(ModelConfig(text=text), pretrained, 0)
    views = build_view_table(listings)
    data = build_training_set(listings, np.zeros((0, 1280), np.float32), np.zeros(0, bool), views, picked)
    device = torch.device("cpu")
    t0 = time.perf_counter()
    trunk = build_trunk(model, tokenizer, data, device, False)
    trunk_s = time.perf_counter() - t0
    tr = Trainer(model, data, trunk, tcfg, device)
    if tcfg.hard_negatives:
        tr.mine_negatives()
    order = tr.epoch_order()
    n_batches = len(order) // tcfg.batch_size
    if n_batches < 1:
        raise SystemExit(f"--pairs {pairs}: fewer than one batch of {tcfg.batch_size}")
    times = []
    for k in range(steps + 2):
        b = k % n_batches
        idx = order[b * tcfg.batch_size:(b + 1) * tcfg.batch_size]
        t0 = time.perf_counter()
        tr.step(idx)
        if k >= 2:
            times.append(time.perf_counter() - t0)
    return {"setting": setting or "default", "texts": len(data.texts), "trunk_s": trunk_s,
            "step_s": statistics.median(times), "amp": autocast_enabled(tcfg, device)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--settings", default=",trainable_layers=6,max_title_tokens=128,hard_negatives=1")
    a = ap.parse_args(argv)
    if not (DATA / "catalog.jsonl").is_file() or not SPLIT.is_file():
        raise SystemExit(f"needs {DATA} and {SPLIT} (python -m bench.realdata.homedepot --steps split)")
    torch.manual_seed(0)
    rows = [run(s, a.pairs, a.steps) for s in a.settings.split(",")]
    base = rows[0]["step_s"]
    for r in rows:
        r["vs_default"] = r["step_s"] / base
        print(f"{r['setting']:>22}: step {r['step_s']:.3f} s ({r['vs_default']:.2f}x), trunk cache {r['trunk_s']:.0f} s "
              f"over {r['texts']} texts, bf16 autocast {r['amp']}")
    print(json.dumps({"machine": machine(), "pairs": a.pairs, "rows": rows}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
