"""The serving half of the query tower: text in, unit vectors out, nothing else loaded.

Built from a checkpoint (`model/checkpoint.py`) and its tokenizer file. On CUDA it runs in fp16;
on CPU in fp32. Token ids are padded to a small set of length buckets so repeated shapes reuse
kernels (and, on GPU, captured graphs; see service-side warm-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.checkpoint import load_query_tower
from model.text import Tokenizer, mean_pool

LENGTH_BUCKETS = (16, 32, 64)


def bucket(n: int, buckets: Sequence[int] = LENGTH_BUCKETS) -> int:
    """Smallest bucket >= n (the largest bucket otherwise: queries are truncated to it)."""
    return next((b for b in buckets if b >= n), buckets[-1])


class QueryEncoder:
    def __init__(self, weights: str | Path, tokenizer: str | Path, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.encoder, self.proj, self.cfg = load_query_tower(weights, self.device)
        self.tokenizer = Tokenizer(tokenizer)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.encoder.to(self.dtype)
        self.proj.to(self.dtype)
        self.max_len = min(self.cfg.text.max_query_tokens, LENGTH_BUCKETS[-1])

    @property
    def dim(self) -> int:
        return self.cfg.tower.dim

    def tokenize(self, queries: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer.ids(queries, self.max_len)
        longest = max((len(x) for x in ids), default=1)
        return self.tokenizer.pad(ids, pad_to=bucket(longest))

    @torch.inference_mode()
    def encode_tokens(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids, m = input_ids.to(self.device), mask.to(self.device)
        pooled = mean_pool(self.encoder(ids, m), m)  # (B, H)
        return F.normalize(self.proj(pooled).float(), dim=-1)  # (B, d)

    def encode(self, queries: Sequence[str]) -> np.ndarray:
        """-> (B, d) float32 unit vectors."""
        if not queries:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, mask = self.tokenize(queries)
        return self.encode_tokens(ids, mask).cpu().numpy()
