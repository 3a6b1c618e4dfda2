"""The serving half of the query tower: text in, unit vectors out, nothing else loaded.

Built from a checkpoint (`model/checkpoint.py`) and its tokenizer file. Token ids are padded to a
small set of length buckets (16/32/64 on GPU, where each is a captured graph; 8/16/24/32/48/64 on
CPU, where padding costs as much as tokens) and written into static per-bucket buffers, so repeated
shapes reuse kernels, graphs and memory, and a request allocates nothing but its own small result.

Backends (`EncoderOptions.backend`):
  torch  the PyTorch module: fp32 on CPU; fp16 on CUDA, replayed from CUDA graphs captured per
         (batch bucket x length bucket) at load (`model/runtime/cuda_graphs.py`), eager for other shapes;
  onnx   the same graph on onnxruntime, fp32 (CPU only);
  int8   onnxruntime with int8 weights in every encoder Linear (CPU only);
  auto   torch on CUDA; on CPU the backend `CPU_AUTO` names, picked by measurement
         (bench/query_encoder.py, docs/PERFORMANCE.md).
An onnx/int8 session is checked against the torch module on probe queries at load; one that
misses its cosine bar is refused (a named backend raises; `auto` falls back to torch and logs).
The CUDA-graph encoder (fp16) is checked the same way against the fp32 module before its cast, and
refused (raises) below its bar.
The default backend for direct construction is `torch`, the fp32 reference that evaluation uses.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.checkpoint import load_query_tower
from model.encoders.text import mean_pool
from model.encoders.tokenizer import Tokenizer
from model.runtime.cuda_graphs import Capture, GraphedForward, GraphPlan, batch_buckets

log = logging.getLogger(__name__)

LENGTH_BUCKETS = (16, 32, 64)
# On CPU a padded token costs as much as a real one and no graph needs a fixed shape, so the
# buckets are finer: most shopper queries fit 8 tokens with [CLS] and [SEP]; padding an 8-token
# query to 16 doubled its encode time (bench/query_encoder.py, PERFORMANCE.md).
CPU_LENGTH_BUCKETS = (8, 16, 24, 32, 48, 64)
BACKENDS = ("auto", "torch", "onnx", "int8")
# Chosen by measurement on 2 CPU cores (docs/PERFORMANCE.md "## Serving"): int8 onnxruntime is
# the fastest at batch 1 and keeps >= 0.95 top-10 overlap with fp32 on the sample catalog.
CPU_AUTO = "int8"
# Minimum cosine to the fp32 torch module on the probe queries, per backend: fp32 onnx is the same
# arithmetic (differences ~1e-7); block-int8 weights measured >= 0.9995 on 1,000 sample queries.
# graphs: the CUDA-graph encoder in fp16 against the fp32 module before its cast. fp16 weights and
# activations move a MiniLM query vector by ~1e-4 in cosine; 0.999 leaves room for that and refuses a
# broken capture (not yet measured on a GPU here: bench/gpu_check.py reports the figure).
PROBE_MIN_COSINE = {"onnx": 0.9999, "int8": 0.995, "graphs": 0.999}
PROBES = ("gift", "red ceramic mug for coffee", "handmade wool scarf in blue with stripes",
          "vintage leather messenger bag brown", "kids wooden toy", "silver ring size 7")


def bucket(n: int, buckets: Sequence[int] = LENGTH_BUCKETS) -> int:
    """Smallest bucket >= n (the largest bucket otherwise: queries are truncated to it)."""
    return next((b for b in buckets if b >= n), buckets[-1])


@dataclass(frozen=True)
class EncoderOptions:
    # auto | torch | onnx | int8 (see the module docstring); the service sets `auto`.
    backend: str = "torch"
    # Capture CUDA graphs at load (CUDA only): ~15x less time per call than eager launches.
    cuda_graphs: bool = True
    # Largest batch bucket (the micro-batcher's max batch); also sizes the static buffers.
    max_batch: int = 32
    # onnxruntime intra-op threads (0: torch.get_num_threads(), which the service's setting sets).
    threads: int = 0


def resolve_backend(requested: str, device_type: str) -> str:
    """-> torch | onnx | int8 for this device, or ValueError naming the bad combination."""
    if requested not in BACKENDS:
        raise ValueError(f"encoder_backend: {requested!r} is not one of {', '.join(BACKENDS)}")
    if requested == "auto":
        return "torch" if device_type == "cuda" else CPU_AUTO
    if requested in ("onnx", "int8") and device_type != "cpu":
        raise ValueError(f"encoder_backend: {requested!r} runs on CPU only; use torch on {device_type}")
    return requested


class QueryEncoder:
    def __init__(self, weights: str | Path, tokenizer: str | Path, device: str | torch.device = "cpu",
                 options: EncoderOptions | None = None, *, capture: Capture | None = None):
        self.options = opts = options or EncoderOptions()
        self.device = torch.device(device)
        self.encoder, self.proj, self.cfg = load_query_tower(weights, self.device)
        self.tokenizer = Tokenizer(tokenizer)
        self.max_len = min(self.cfg.text.max_query_tokens, LENGTH_BUCKETS[-1])
        table = LENGTH_BUCKETS if self.device.type == "cuda" else CPU_LENGTH_BUCKETS
        self.length_buckets = tuple(b for b in table if b <= bucket(self.max_len, table))
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.lock = threading.Lock()  # static buffers: one tokenize + encode at a time
        self.graphs: GraphedForward | None = None
        self.graph_min_cosine: float | None = None  # the graph encoder's probe parity with fp32 (when captured)
        self._onnx = None
        self.backend = resolve_backend(opts.backend, self.device.type)
        graphs = self.backend == "torch" and (capture is not None or (self.device.type == "cuda" and opts.cuda_graphs))
        # fp32 probe vectors, taken before the cast to fp16: the reference the graph encoder is checked against
        probe_ref = self._probe_vectors() if graphs else None
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.encoder.to(self.dtype)
        self.proj.to(self.dtype)
        if self.backend in ("onnx", "int8"):
            try:
                self._use_onnx(self.backend)
            except Exception as e:
                if opts.backend != "auto":
                    raise
                log.warning("query encoder: %s backend unavailable (%s: %s); using torch", self.backend,
                            type(e).__name__, e)
                self.backend = "torch"
        if graphs and self.backend == "torch":
            self.graphs = self._capture(capture)
            self._check_graphs(probe_ref)

    @property
    def dim(self) -> int:
        return self.cfg.tower.dim

    @property
    def describe(self) -> str:
        """e.g. 'cpu/int8', 'cuda/torch+graphs': for /readyz and the build-info metric."""
        return f"{self.device.type}/{self.backend}{'+graphs' if self.graphs is not None else ''}"

    # ------------------------------------------------------------------ backends

    def _use_onnx(self, backend: str) -> None:
        from model.runtime.onnx_query import OnnxQueryRunner, export_query_onnx

        runner = OnnxQueryRunner(export_query_onnx(self.encoder, self.proj, int8=backend == "int8"), self.dim,
                                 self.options.threads)
        ids, mask = self.tokenize(PROBES)
        ref = self._torch_forward(torch.from_numpy(ids), torch.from_numpy(mask)).cpu().numpy()  # (P, d)
        got = runner.run(ids, mask)  # (P, d)
        cos = float((ref * got).sum(1).min())
        if not cos >= PROBE_MIN_COSINE[backend]:
            raise RuntimeError(f"{backend} query encoder differs from torch on the probe queries "
                               f"(min cosine {cos:.5f} < {PROBE_MIN_COSINE[backend]})")
        self._onnx = runner
        # The session holds its own weights: drop the torch copy (~90 MB per worker process).
        self.encoder = self.proj = None  # type: ignore[assignment]

    def _probe_vectors(self) -> np.ndarray:
        """(P, d) float32 unit vectors of PROBES from the torch module as it is now (eager)."""
        ids, mask = self.tokenize(PROBES)
        return self._torch_forward(torch.from_numpy(ids), torch.from_numpy(mask)).cpu().numpy()

    def _check_graphs(self, ref: np.ndarray | None) -> None:
        """The graph encoder (fp16 on CUDA) against the fp32 module on the probe queries, as the onnx
        and int8 sessions are checked: below PROBE_MIN_COSINE["graphs"] the encoder is refused (a
        reload keeps the previous version)."""
        assert self.graphs is not None and ref is not None
        step = max(1, self.options.max_batch)
        parts = []
        for start in range(0, len(PROBES), step):  # batches that fit a bucket: every probe replays a graph
            ids, mask = self.tokenize(PROBES[start:start + step])
            out = self.graphs(ids, mask)
            if out is None:
                raise RuntimeError(f"graph query encoder: no graph for probe batch shape {ids.shape}")
            parts.append(np.array(out, dtype=np.float32))
        got = np.concatenate(parts)  # (P, d)
        cos = float((ref * got).sum(1).min())
        self.graph_min_cosine = cos
        if not cos >= PROBE_MIN_COSINE["graphs"]:
            raise RuntimeError(f"graph query encoder ({self.device.type}, {str(self.dtype).removeprefix('torch.')}) "
                               f"differs from the fp32 module on the probe queries (min cosine {cos:.5f} < "
                               f"{PROBE_MIN_COSINE['graphs']})")

    def _capture(self, capture: Capture | None) -> GraphedForward:
        plan = GraphPlan(batch_buckets(self.options.max_batch), self.length_buckets)
        tok = self.tokenizer
        with torch.inference_mode():
            return GraphedForward(self._torch_forward, plan, self.device, pad_id=tok.pad_id, cls_id=tok.cls_id,
                                  sep_id=tok.sep_id, capture=capture)

    def _torch_forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) int64 on any device -> (B, d) float32 unit vectors on self.device."""
        with torch.inference_mode():
            ids, mask = ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
            pooled = mean_pool(self.encoder(ids, mask), mask)  # (B, H)
            return F.normalize(self.proj(pooled).float(), dim=-1)  # (B, d)

    # ------------------------------------------------------------------ calls

    def _buffer(self, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Views (batch, length) of the static (capacity, length) id and mask buffers."""
        ids, mask = self._buffers.get(length, (None, None))
        if ids is None or ids.shape[0] < batch:
            cap = max(batch, self.options.max_batch)
            ids = np.empty((cap, length), dtype=np.int64)  # (cap, T) reused by every later call
            mask = np.empty((cap, length), dtype=np.int64)  # (cap, T)
            self._buffers[length] = (ids, mask)
        return ids[:batch], mask[:batch]

    def tokenize(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """-> (ids, mask) (B, T) int64, T a length bucket: views of static buffers that the next
        call overwrites (the service tokenizes and encodes a batch before the next one starts)."""
        token_ids = self.tokenizer.ids(queries, self.max_len)
        length = bucket(max((len(x) for x in token_ids), default=1), self.length_buckets)
        ids, mask = self._buffer(len(token_ids), length)
        ids.fill(self.tokenizer.pad_id)
        mask.fill(0)
        for i, x in enumerate(token_ids):
            ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return ids, mask

    def encode_tokens(self, input_ids: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor) -> np.ndarray:
        """(B, T) int64 -> (B, d) float32 unit vectors; may be a view of a reused output buffer."""
        ids_np = np.ascontiguousarray(input_ids.numpy() if isinstance(input_ids, torch.Tensor) else input_ids)
        mask_np = np.ascontiguousarray(mask.numpy() if isinstance(mask, torch.Tensor) else mask)
        if self._onnx is not None:
            return self._onnx.run(ids_np, mask_np)
        if self.graphs is not None:
            out = self.graphs(ids_np, mask_np)
            if out is not None:
                return out
        return self._torch_forward(torch.from_numpy(ids_np), torch.from_numpy(mask_np)).cpu().numpy()

    def encode(self, queries: Sequence[str]) -> np.ndarray:
        """-> (B, d) float32 unit vectors, a fresh array (safe to keep)."""
        if not queries:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self.lock:
            return np.array(self.encode_tokens(*self.tokenize(queries)), dtype=np.float32, copy=True)
