"""Cross-view retrieval, leave-one-view-out.

For each view type t: every listing that has t is a query, embedded through t's own encoder and
projection; the targets are ALL listings fused WITHOUT their t view (listings lacking t keep their
usual vector), so a listing can only find itself through its other views. Recall@1 and @10 of the
listing itself over the full catalog. A model whose views live in one space scores high; a
single-view model (clip) that never trained a view's projection scores near chance for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from model.config import VIEW_TYPES
from model.data.views import ViewTable
from model.embed import embed_slots, pooled_texts, text_slot_rows
from model.towers import TwoTower
from model.train.pairs import SlotTable
from model.train.trunk import TrunkCache


@torch.inference_mode()
def slot_embeddings(
    model: TwoTower, tokenizer: Any, views: ViewTable, slots: SlotTable, image_features: np.ndarray,
    device: torch.device, trunk: TrunkCache | None = None, batch_size: int = 2048,
) -> torch.Tensor:
    """(n, S, d) float32 unit view embeddings of every listing (zeros where missing), on CPU."""
    model.eval().to(device)
    pooled = pooled_texts(model, tokenizer, views.texts.texts, views.texts.kinds,
                          text_slot_rows(slots, slots.rows), device, trunk=trunk)
    feats = torch.from_numpy(np.asarray(image_features, dtype=np.float32))
    chunks = [
        embed_slots(model, slots, slots.rows[s:s + batch_size], pooled, feats, device).float().cpu()
        for s in range(0, len(views), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.zeros(0, len(slots.types), model.cfg.tower.dim)


@torch.inference_mode()
def leave_one_view_out(
    model: TwoTower, z: torch.Tensor, present: np.ndarray, slot_types: tuple[int, ...],
    *, max_queries: int = 2000, seed: int = 0, ks: tuple[int, ...] = (1, 10),
) -> dict[str, dict[str, float]]:
    """-> {view name: {"recall@1", "recall@10", "n_queries"}} for every view type with >= 2 listings."""
    st = torch.tensor(slot_types)
    pres = torch.from_numpy(present)  # (n, S)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    for t, name in enumerate(VIEW_TYPES):
        cols = [s for s, ty in enumerate(slot_types) if ty == t]
        if not cols:
            continue
        first = cols[0]  # the query is the view's first instance (e.g. the first other photo)
        has = np.flatnonzero(present[:, first])
        if len(has) < 2:
            continue
        if len(has) > max_queries:
            has = np.sort(rng.choice(has, max_queries, replace=False))
        keep = pres & (st != t).unsqueeze(0)  # (n, S): every view but t
        targets = model.fuse(z, keep, st, index_only=True)  # (n, d): what the model would index
        queries = z[has, first]  # (q, d)
        scores = queries @ targets.T  # (q, n)
        self_score = scores[torch.arange(len(has)), torch.from_numpy(has)]  # (q,)
        rank = (scores > self_score.unsqueeze(1)).sum(1)  # (q,) 0 = first
        res = {f"recall@{k}": float((rank < k).float().mean()) for k in ks}
        res["n_queries"] = float(len(has))
        out[name] = res
    return out
