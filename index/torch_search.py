"""Exact inner-product candidate search in torch, on any device: the engine of `TorchCudaSearcher`.

No faiss import, so a machine without faiss (the GPU check, bench/gpu_check.py) runs it as is.

The stored vectors go to the device once: fp16 on CUDA (half the memory), fp32 on CPU (CPU fp16
matrix products are slow and round their outputs). A search never holds a (B, n) score matrix: the
rows are scanned in chunks whose fp32 scores fit `scratch_bytes`, each chunk's best rows are merged
into a running fp32 top-`keep` per query, and only (B, keep) row ids come back to the host. Scores
are fp32 on every device:
  CPU        fp32 vectors, fp32 query: a plain fp32 product;
  CUDA       fp16 vectors; the fp32 query is split into two fp16 halves (hi = fp16(q), lo =
             fp16(q - hi)) and both go through one fp16 x fp16 -> fp32 product (`torch.mm(...,
             out_dtype=float32)`), hi + lo: the score of the fp32 query to about 1e-7, not the
             fp16 grid (which ties every score within ~2.4e-4 of 0.5);
  fallback   where that product is missing, each chunk is cast to fp32 (more scratch per row).
The caller rescores the candidates exactly (index/search.py `rerank_exact`), so a near-tie at the
cut that the device arithmetic orders differently is covered by the `keep - k` slack rows.

Filters arrive as (n,) bool masks built afresh per request; a mask goes to the device once per
distinct content: its bits are packed, hashed (blake2b), and an LRU of device masks keyed by that
digest answers later requests of the same filter without a host->device copy of the mask.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

# Rows per host->device copy when the vectors are uploaded (bounded host scratch at load).
UPLOAD_ROWS = 65_536
# Fewest rows per chunk: below this, kernel launches cost more than the scan.
MIN_CHUNK_ROWS = 1_024


def mixed_mm_available(device: torch.device) -> bool:
    """Whether this torch has the fp16 x fp16 -> fp32 product on `device` (CUDA in torch >= 2.8)."""
    if device.type != "cuda":
        return False
    try:
        a = torch.ones((2, 8), dtype=torch.float16, device=device)
        out = torch.mm(a, a.T, out_dtype=torch.float32)  # type: ignore[call-overload]
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    return out.dtype == torch.float32 and float(out[0, 0]) == 8.0


class DeviceMasks:
    """LRU of filter masks on the device, keyed by a digest of their packed bits."""

    def __init__(self, device: torch.device, capacity: int = 16):
        self.device, self.capacity = device, max(1, int(capacity))
        self._masks: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.uploads = 0  # host->device mask copies made (tests and the GPU check read it)
        self._bit = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=device)  # (8,)

    def get(self, allowed: np.ndarray) -> torch.Tensor:
        """(n,) bool host mask -> the same mask on the device, (n,) bool."""
        packed = np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")  # (ceil(n / 8),)
        key = hashlib.blake2b(packed.tobytes(), digest_size=16, person=str(len(allowed)).encode()[:16]).digest()
        mask = self._masks.get(key)
        if mask is not None:
            self._masks.move_to_end(key)
            return mask
        dev = torch.from_numpy(packed).to(self.device)  # (n / 8,) uint8: an eighth of the bool bytes
        mask = ((dev[:, None] & self._bit) != 0).reshape(-1)[:len(allowed)]  # (n,) bool
        self.uploads += 1
        self._masks[key] = mask
        if len(self._masks) > self.capacity:
            self._masks.popitem(last=False)
        return mask

    def __len__(self) -> int:
        return len(self._masks)


class TorchExact:
    """Exact top-`keep` row ids over (n, d) stored vectors on a torch device, in bounded memory."""

    def __init__(self, vectors: np.ndarray, device: str | torch.device = "cuda", *,
                 scratch_bytes: int = 256 << 20, mask_cache: int = 16, storage: torch.dtype | None = None):
        self.device = torch.device(device)
        # fp16 on CUDA, fp32 on CPU; `storage` overrides (tests run the fp16 path's fallback on CPU)
        self.storage = storage or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.n, self.d = int(vectors.shape[0]), int(vectors.shape[1])
        self.scratch_bytes = int(scratch_bytes)
        if self.scratch_bytes < 1:
            raise ValueError(f"torch search scratch: must be >= 1 byte, got {scratch_bytes}")
        np_dtype = np.float16 if self.storage == torch.float16 else np.float32
        self.matrix = torch.empty((self.n, self.d), dtype=self.storage, device=self.device)  # (n, d)
        for start in range(0, self.n, UPLOAD_ROWS):  # a memory-mapped vectors.npy is read piecewise
            part = np.ascontiguousarray(vectors[start:start + UPLOAD_ROWS], dtype=np_dtype)
            self.matrix[start:start + len(part)].copy_(torch.from_numpy(part))
        self.mixed = self.storage == torch.float16 and mixed_mm_available(self.device)
        self.masks = DeviceMasks(self.device, mask_cache)
        self.last_chunks = 0  # chunks the last search scanned (tests read it)

    @property
    def mode(self) -> str:
        """How scores are computed: fp32 | fp16-split-fp32 | fp16-cast-fp32."""
        if self.storage != torch.float16:
            return "fp32"
        return "fp16-split-fp32" if self.mixed else "fp16-cast-fp32"

    def plan(self, batch: int, keep: int) -> tuple[int, int]:
        """(queries per block, rows per chunk) so one chunk's fp32 scratch stays within budget."""
        per_query_row = 4 * (3 if self.mixed else 2)  # fp32 scores (both halves, then their sum) + a temp
        per_row_cast = 4 * self.d if self.storage == torch.float16 and not self.mixed else 0  # fp32 chunk copy
        min_rows = min(self.n, max(keep, MIN_CHUNK_ROWS))
        block = max(1, min(batch, (self.scratch_bytes - min_rows * per_row_cast) // (min_rows * per_query_row)))
        rows = (self.scratch_bytes // (block * per_query_row + per_row_cast)) // MIN_CHUNK_ROWS * MIN_CHUNK_ROWS
        return block, int(min(self.n, max(min_rows, rows)))

    def _scores(self, q: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        """q (b, d) fp32 (or the stacked (2b, d) fp16 halves), chunk (c, d) -> (b, c) fp32."""
        if self.storage != torch.float16:
            return q @ chunk.T  # (b, c)
        if self.mixed:
            both = torch.mm(q, chunk.T, out_dtype=torch.float32)  # type: ignore[call-overload]  # (2b, c)
            half = q.shape[0] // 2
            return both[:half] + both[half:]  # (b, c): hi + lo
        return q @ chunk.float().T  # (b, c)

    def _prepare(self, q: np.ndarray) -> torch.Tensor:
        qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(self.device)  # (B, d)
        if not self.mixed:
            return qt
        hi = qt.half()  # (B, d)
        lo = (qt - hi.float()).half()  # (B, d) what fp16 rounding dropped
        return torch.stack([hi, lo])  # (2, B, d)

    def topk_rows(self, q: np.ndarray, keep: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """q (B, d) float32 -> (B, min(keep, n)) int64 row ids, best first by device score, -1 where
        fewer rows pass `allowed` (n,) bool."""
        B = q.shape[0]
        keep = min(int(keep), self.n)
        if B == 0 or keep < 1:
            return np.full((B, max(keep, 0)), -1, dtype=np.int64)
        mask = None if allowed is None else self.masks.get(allowed)  # (n,) bool on the device
        block, rows = self.plan(B, keep)
        out = np.empty((B, keep), dtype=np.int64)
        with torch.inference_mode():
            qt = self._prepare(q)
            for b0 in range(0, B, block):
                qb = qt[:, b0:b0 + block].reshape(-1, self.d) if self.mixed else qt[b0:b0 + block]
                out[b0:b0 + block] = self._scan(qb, keep, rows, mask)
        return out

    def _scan(self, qb: torch.Tensor, keep: int, rows: int, mask: torch.Tensor | None) -> np.ndarray:
        b = qb.shape[0] // 2 if self.mixed else qb.shape[0]
        best_s = torch.full((b, 0), float("-inf"), dtype=torch.float32, device=self.device)  # (b, <= keep)
        best_r = torch.zeros((b, 0), dtype=torch.int64, device=self.device)
        chunks = 0
        for start in range(0, self.n, rows):
            s = self._scores(qb, self.matrix[start:start + rows])  # (b, c) fp32
            if mask is not None:
                s.masked_fill_(~mask[start:start + rows], float("-inf"))
            top_s, top_i = torch.topk(s, min(keep, s.shape[1]), dim=1)  # (b, kk)
            cand_s = torch.cat([best_s, top_s], dim=1)  # (b, <= 2 keep)
            cand_r = torch.cat([best_r, top_i + start], dim=1)
            best_s, pick = torch.topk(cand_s, min(keep, cand_s.shape[1]), dim=1)  # (b, keep)
            best_r = torch.gather(cand_r, 1, pick)
            chunks += 1
        self.last_chunks = chunks
        best_r = torch.where(torch.isfinite(best_s), best_r, torch.full_like(best_r, -1))  # masked rows: -1
        return best_r.cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "storage": str(self.storage).removeprefix("torch."), "scores": self.mode,
                "scratch_mb": round(self.scratch_bytes / 2**20, 1), "masks_cached": len(self.masks)}
