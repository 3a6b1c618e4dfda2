"""Inference-time embedding: listings -> fused unit vectors, queries -> unit vectors.

`embed_listings` computes every view of every listing exactly (no sampling) and fuses them with
`TwoTower.fuse`, the same function training used; it works in chunks so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from model.config import IMAGE_VIEWS, TEXT_VIEWS, VIEW_TYPES
from model.data.views import KIND_QUERY, KIND_TITLE, ViewTable
from model.towers import TwoTower
from model.train.pairs import SlotTable
from model.train.trunk import TrunkCache


def _budget(model: TwoTower, kind: int) -> int:
    t = model.cfg.text
    return t.max_query_tokens if kind == KIND_QUERY else t.max_title_tokens if kind == KIND_TITLE else t.max_text_tokens


@torch.inference_mode()
def pooled_texts(
    model: TwoTower,
    tokenizer: Any,
    texts: Sequence[str],
    kinds: Sequence[int],
    rows: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
    trunk: TrunkCache | None = None,
    progress: bool = False,
) -> dict[int, torch.Tensor]:
    """Mean-pooled final hidden states (H,) for the text rows asked for, each computed once.

    With a TrunkCache (from training) only the top layers run; else the full encoder."""
    model.eval()
    wanted = np.unique(rows[rows >= 0])
    out: dict[int, torch.Tensor] = {}
    # Length-sorted batches: little padding, much less work on CPU.
    order = sorted(wanted.tolist(), key=lambda r: len(texts[r]))
    n_frozen = model.n_layers - model.cfg.text.trainable_layers
    bar = _bar(len(order), progress, "embed texts")
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        if trunk is not None:
            hidden, mask = trunk.gather(torch.tensor(chunk), device=device)  # (b, T, H), (b, T)
            pooled = model.text_pooled(hidden, mask, n_frozen)  # (b, H)
        else:
            budget = max(_budget(model, kinds[r]) for r in chunk)
            ids, mask = tokenizer.encode([texts[r] for r in chunk], max_len=budget)
            pooled = model.tokens_pooled(ids.to(device), mask.to(device))  # (b, H)
        for r, vec in zip(chunk, pooled.float().cpu(), strict=True):
            out[r] = vec
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return out


def embed_slots(
    model: TwoTower, slots: SlotTable, rows: np.ndarray, pooled: dict[int, torch.Tensor],
    feats: torch.Tensor, device: torch.device,
) -> torch.Tensor:
    """Slot rows (b, S) -> (b, S, d) unit view embeddings (zeros where missing)."""
    z = torch.zeros(len(rows), len(slots.types), model.cfg.tower.dim, device=device)  # (b, S, d)
    for s, t in enumerate(slots.types):
        has = np.nonzero(rows[:, s] >= 0)[0]
        if not len(has):
            continue
        if t in TEXT_VIEWS:
            x = torch.stack([pooled[int(r)] for r in rows[has, s]]).to(device)  # (k, H)
            z[has, s] = model.project_text(t, x)
        elif t in IMAGE_VIEWS:
            z[has, s] = model.project_image(t, feats[rows[has, s]].to(device))  # (k, F) -> (k, d)
    return z


def text_slot_rows(slots: SlotTable, rows: np.ndarray) -> np.ndarray:
    return rows[:, [s for s, t in enumerate(slots.types) if t in TEXT_VIEWS]]


@torch.inference_mode()
def embed_listings(
    model: TwoTower,
    tokenizer: Any,
    views: ViewTable,
    slots: SlotTable,
    image_features: np.ndarray,
    device: torch.device,
    *,
    batch_size: int = 1024,
    trunk: TrunkCache | None = None,
    progress: bool = False,
) -> np.ndarray:
    """-> (n, d) float32 unit fused vectors, over the model's indexed view types."""
    model.eval().to(device)
    slot_types = torch.tensor(slots.types, device=device)
    pooled = pooled_texts(model, tokenizer, views.texts.texts, views.texts.kinds,
                          text_slot_rows(slots, slots.rows), device, trunk=trunk, progress=progress)
    feats = torch.from_numpy(np.asarray(image_features, dtype=np.float32))
    out = np.zeros((len(views), model.cfg.tower.dim), dtype=np.float32)
    for start in range(0, len(views), batch_size):
        rows = slots.rows[start:start + batch_size]  # (b, S)
        present = torch.from_numpy(slots.present[start:start + batch_size]).to(device)  # (b, S)
        z = embed_slots(model, slots, rows, pooled, feats, device)  # (b, S, d)
        out[start:start + len(rows)] = model.fuse(z, present, slot_types).float().cpu().numpy()
    return out


@torch.inference_mode()
def view_clouds(
    model: TwoTower,
    tokenizer: Any,
    views: ViewTable,
    slots: SlotTable,
    image_features: np.ndarray,
    device: torch.device,
    *,
    sample: int = 512,
    seed: int = 0,
    trunk: TrunkCache | None = None,
) -> dict[str, np.ndarray]:
    """Per view type, the unit embeddings of up to `sample` listings' views (for diagnostics)."""
    model.eval().to(device)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(views), min(sample, len(views)), replace=False))
    rows = slots.rows[pick]  # (m, S)
    pooled = pooled_texts(model, tokenizer, views.texts.texts, views.texts.kinds,
                          text_slot_rows(slots, rows), device, trunk=trunk)
    feats = torch.from_numpy(np.asarray(image_features, dtype=np.float32))
    z = embed_slots(model, slots, rows, pooled, feats, device).float().cpu().numpy()  # (m, S, d)
    out: dict[str, np.ndarray] = {}
    for t, name in enumerate(VIEW_TYPES):
        cols = [s for s, st in enumerate(slots.types) if st == t]
        vecs = [z[i, s] for s in cols for i in range(len(pick)) if rows[i, s] >= 0]
        if vecs:
            out[name] = np.stack(vecs)[:sample]
    return out


@torch.inference_mode()
def embed_query_rows(model: TwoTower, texts: Any, rows: np.ndarray, device: torch.device, trunk: TrunkCache,
                     batch_size: int = 1024) -> np.ndarray:
    """Query text rows (m,) of a TextTable covered by `trunk` -> (m, d) float32 unit query vectors
    (only the trainable top layers run: the training loop's view of the query tower)."""
    pooled = pooled_texts(model, None, texts.texts, texts.kinds, rows, device, trunk=trunk)
    out = np.zeros((len(rows), model.cfg.tower.dim), dtype=np.float32)
    for start in range(0, len(rows), batch_size):
        x = torch.stack([pooled[int(r)] for r in rows[start:start + batch_size]]).to(device)  # (b, H)
        out[start:start + len(x)] = model.project_query(x).float().cpu().numpy()
    return out


@torch.inference_mode()
def embed_queries(
    model: TwoTower,
    tokenizer: Any,
    queries: Sequence[str],
    device: torch.device,
    batch_size: int = 256,
) -> np.ndarray:
    """-> (n, d) float32 unit query vectors (the query tower, full encoder)."""
    model.eval().to(device)
    out = np.zeros((len(queries), model.cfg.tower.dim), dtype=np.float32)
    order = np.argsort([len(q) for q in queries], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = tokenizer.encode([queries[i] for i in idx], max_len=model.cfg.text.max_query_tokens)
        out[idx] = model.encode_query_tokens(ids.to(device), mask.to(device)).float().cpu().numpy()
    return out


def _bar(total: int, enabled: bool, desc: str) -> Any:
    if not enabled or total == 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit="text", dynamic_ncols=True)
