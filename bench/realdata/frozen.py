"""The frozen-MiniLM zero-shot baseline: mean-pooled all-MiniLM-L6-v2, no projection, cosine.

`FrozenMiniLM.encode` returns the UNnormalised mean-pooled vectors (model/train/trunk.py encode_texts, the
same encoder and tokenizer the towers start from) and caches them as .npy under a folder, keyed by
the texts and the token budget, so a rerun (or a second table) does not encode twice.
`untrained_projection` is the model family at 0 epochs: the same vectors through the random
orthogonal map every text projection starts from (model/towers.py init_projections), i.e. what
`service build-index --epochs 0` would index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from model.encoders.weights import load_text_encoder
from model.train.trunk import encode_texts


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class FrozenMiniLM:
    def __init__(self, cache_dir: Path, batch_size: int = 128) -> None:
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self._model = None
        self._tok = None

    def _load(self) -> None:
        if self._model is None:
            self._model, self._tok, _ = load_text_encoder(None)

    def encode(self, texts: Sequence[str], max_len: int, name: str) -> np.ndarray:
        """(N, 384) float32 mean-pooled vectors; cached as <name>-<digest>.npy."""
        digest = hashlib.sha1(("\x00".join(texts) + f"\x01{max_len}").encode("utf-8")).hexdigest()[:12]
        path = self.cache_dir / f"{name}-{digest}.npy"
        if path.is_file():
            return np.load(path)
        self._load()
        vecs = encode_texts(self._model, self._tok, list(texts), max_len, batch_size=self.batch_size).numpy()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(path, vecs.astype(np.float32))
        return vecs.astype(np.float32)


def untrained_projection(seed: int = 0, dim: int = 256) -> np.ndarray:
    """(dim, 384) the 0-epoch text/query projection of a model built with `seed`."""
    from model.checkpoint import new_model
    from model.config import ModelConfig, TowerConfig

    pretrained, _, _ = load_text_encoder(None)
    model = new_model(ModelConfig(tower=TowerConfig(dim=dim)), pretrained, seed)
    with torch.no_grad():
        return model.query_proj.weight.detach().numpy().copy()
