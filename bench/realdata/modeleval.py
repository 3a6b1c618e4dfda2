"""A built version, opened for the real-data tasks.

- `query_rankings`: the served path of `service eval` (QueryEncoder + the version's FAISS index),
  returning the ranked listing ids so the tables can add bootstrap CIs;
- `ModelViews`: every view of every listing embedded by the version's own item tower (the full
  encoder, no training-time cache), the fused vectors recomputed from them, and helpers for the
  ikea photo queries (a room photo through the `image_other` or the primary-image head) and for
  targets fused WITHOUT given photos (so a room photo cannot find a listing through itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index.build import load_index
from index.search import FaissCpuSearcher
from index.store.artifacts import ArtifactStore, read_manifest
from index.store.listings import ListingStore
from model.checkpoint import load_model
from model.config import IMAGE, IMAGE_OTHER, IMAGE_VIEWS
from model.data.catalog import Listing
from model.data.views import ViewTable
from model.encoders.tokenizer import Tokenizer
from model.eval.crossview import slot_embeddings
from model.runtime.query_encoder import QueryEncoder
from model.towers import TwoTower
from model.train.pairs import build_slots
from service.build.evaluation import ranked_ids


def version_dir(artifacts: Path, version: str) -> Path:
    store = ArtifactStore(artifacts)
    store.verify(version)
    return store.version_dir(version)


def query_rankings(folder: Path, queries: Sequence[str], k: int = 500) -> tuple[list[list[str]], dict[str, Any]]:
    """Ranked listing ids per query through the version's query tower and index (CPU)."""
    import time

    manifest = read_manifest(folder)
    encoder = QueryEncoder(folder / "model.safetensors", folder / "tokenizer.json", "cpu")
    searcher = FaissCpuSearcher(load_index(str(folder / "index.faiss")), np.load(folder / "vectors.npy", mmap_mode="r"),
                                manifest.get("index_params"))
    ids = ListingStore(folder / "listings.sqlite").ids()
    t0 = time.perf_counter()
    qvecs = encoder.encode(list(queries))  # (Q, d)
    t1 = time.perf_counter()
    ranked = ranked_ids(searcher, ids, qvecs, k)
    t2 = time.perf_counter()
    info = {"index_key": manifest.get("index_key"), "encode_ms_per_query": 1000 * (t1 - t0) / max(1, len(queries)),
            "search_ms_per_query": 1000 * (t2 - t1) / max(1, len(queries))}
    return ranked, info


@dataclass
class ModelViews:
    model: TwoTower
    z: torch.Tensor  # (n, S, d) unit view embeddings, zeros where missing
    present: np.ndarray  # (n, S) bool
    rows: np.ndarray  # (n, S) int64 text / image rows, -1 where missing
    slot_types: tuple[int, ...]  # (S,)
    fused: np.ndarray  # (n, d) float32: what the version indexes

    def fuse(self, present: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model.fuse(self.z, torch.from_numpy(present), torch.tensor(self.slot_types)).numpy()

    def without_image(self, image_row: int) -> np.ndarray:
        """(n, d) targets fused with the photo `image_row` removed from every listing that has it."""
        is_img = np.isin(np.asarray(self.slot_types), IMAGE_VIEWS)  # (S,)
        hit = (self.rows == image_row) & is_img[None, :]  # (n, S)
        out = self.fused.copy()
        touched = np.flatnonzero(hit.any(axis=1))
        if len(touched):
            present = self.present[touched] & ~hit[touched]
            with torch.inference_mode():
                out[touched] = self.model.fuse(self.z[touched], torch.from_numpy(present),
                                               torch.tensor(self.slot_types)).numpy()
        return out

    @torch.inference_mode()
    def photo_queries(self, features: np.ndarray, head: str) -> np.ndarray:
        """(R, F) frozen photo features -> (R, d) unit vectors through `head` (image | image_other)."""
        view = {"image": IMAGE, "image_other": IMAGE_OTHER}[head]
        return self.model.project_image(view, torch.from_numpy(np.asarray(features, np.float32))).numpy()


def model_views(folder: Path, views: ViewTable, features: np.ndarray, ok: np.ndarray) -> ModelViews:
    """Embed every view of the catalog's listings with the version's model (CPU)."""
    model = load_model(folder / "model.safetensors", "cpu")
    tokenizer = Tokenizer(folder / "tokenizer.json")
    slots = build_slots(views, ok, model.cfg.tower.max_other_images)
    z = slot_embeddings(model, tokenizer, views, slots, features, torch.device("cpu"))  # (n, S, d)
    with torch.inference_mode():
        fused = model.fuse(z, torch.from_numpy(slots.present), torch.tensor(slots.types)).numpy()  # (n, d)
    return ModelViews(model, z, slots.present, slots.rows, slots.types, fused)


def listing_ids(listings: Sequence[Listing]) -> list[str]:
    return [lst.id for lst in listings]
