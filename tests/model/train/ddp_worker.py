"""Worker for tests/model/train/test_ddp.py: the same tiny training run in one process or under
`torchrun --nproc_per_node=2` (gloo on CPU). Rank 0 writes the trained weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from model.config import ModelConfig, TextConfig, TowerConfig, TrainConfig
from model.data.catalog import Listing
from model.data.interactions import Interaction
from model.data.views import build_view_table
from model.encoders.text import BertConfig
from model.encoders.tokenizer import Tokenizer
from model.encoders.weights import resolve_weights_dir
from model.towers import TwoTower
from model.train.distributed import DistContext, init_distributed, shutdown
from model.train.pairs import build_training_set
from model.train.trainer import Trainer, build_trunk

WORDS = ["red", "blue", "striped", "wool", "mug", "scarf", "vase", "gift", "soft", "bright", "linen", "glass"]
TINY_BERT = BertConfig(hidden=32, n_layers=2, n_heads=2, intermediate=64, hidden_dropout=0.0, attention_dropout=0.0)


def train_tiny(ctx: DistContext, objective: str = "ft", steps: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    words = lambda k: " ".join(rng.choice(WORDS, k))  # noqa: E731
    listings = [
        Listing(id=f"L{i}", title=words(4), description=words(10), tags=tuple(rng.choice(WORDS, 3)),
                images=(f"/x/{i}_0.jpg", f"/x/{i}_1.jpg"), image_slots=(0, 1))
        for i in range(64)
    ]
    views = build_view_table(listings)
    feats = rng.normal(size=(len(views.image_paths), 1280)).astype(np.float32)
    pairs = [Interaction(words(2), lst.id, float(rng.integers(1, 3))) for lst in listings]
    data = build_training_set(listings, feats, np.ones(len(feats), bool), views, pairs, max_other_images=2)
    cfg = ModelConfig(text=TextConfig(trainable_layers=1), tower=TowerConfig(dim=16, image_hidden=32, max_other_images=2))
    model = TwoTower(cfg, TINY_BERT)
    model.init_projections(0)
    tok = Tokenizer(resolve_weights_dir(None) / "tokenizer.json")
    tcfg = TrainConfig(objective=objective, batch_size=16, epochs=1, seed=0, n_prototypes=4, sinkhorn_iters=20,
                       amp=False, warmup_frac=0.0)
    trunk = build_trunk(model, tok, data, torch.device("cpu"), False)
    tr = Trainer(model, data, trunk, tcfg, torch.device("cpu"), dist=ctx)
    order = tr.epoch_order()
    for s in range(steps):
        tr.step(order[s * 16:(s + 1) * 16])
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--objective", default="ft")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ctx = init_distributed()
    state = train_tiny(ctx, a.objective)
    if ctx.is_main:
        save_file(state, str(a.out))
    ctx.barrier()
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
