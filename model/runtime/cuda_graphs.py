"""CUDA-graph replay of the query tower for fixed (batch, length) buckets.

Eager fp16 MiniLM on a GPU costs 4.5-6 ms per call, almost all of it kernel-launch overhead; a
captured graph replays the same ~100 kernels in ~0.3 ms (reference GPU figures, docs/PERFORMANCE.md; not measured here). A graph has fixed shapes and
fixed memory, so at warm-up one graph is captured per (batch bucket, length bucket), each with
static input/output tensors: a call copies its token ids into the smallest bucket that holds them
(one host->device copy from a pinned staging buffer), pads the rest, replays, and copies the first
B rows back. Shapes outside every bucket (a batch larger than the largest bucket, a length that is
not a bucket) return None, and the caller runs the eager path.

Padding rows beyond B hold a dummy query ([CLS] [SEP], mask 1 1 0 ...) rather than an all-zero
mask: a fully masked row would make attention divide by zero and fill the row with NaN (harmless
to the other rows, but it would trip any NaN check on the output).

`capture` is injectable so the bucket and buffer logic runs on CPU in tests (`eager_capture`
re-runs the forward on replay); on CUDA `cuda_capture` records a real graph, all graphs sharing one
memory pool (captured largest first, so the pool is sized once), on a side stream in thread-local
capture mode, so a reload may capture while another thread serves on the GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

Forward = Callable[[Tensor, Tensor], Tensor]  # (ids (B, T), mask (B, T)) -> (B, d)
# (forward, static ids, static mask) -> (replay, static output)
Capture = Callable[[Forward, Tensor, Tensor], tuple[Callable[[], None], Tensor]]
# Graph capture's error mode: "thread_local", so capturing during a hot reload in another thread than
# the one serving GPU work is allowed (see `cuda_capture`).
CAPTURE_ERROR_MODE = "thread_local"


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, ... below max_batch, then max_batch itself: at most 2x padding, log2 graphs."""
    if max_batch < 1:
        raise ValueError(f"max_batch: must be >= 1, got {max_batch}")
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return (*out, max_batch)


def smallest_fit(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket >= n, or None when n exceeds every bucket."""
    return next((b for b in sorted(buckets) if b >= n), None)


@dataclass(frozen=True)
class GraphPlan:
    """Which shapes get a graph. Each is captured at warm-up, so the product is the capture cost."""

    # Every batch size the micro-batcher can form maps to one of these (max_batch is the last).
    batch_buckets: tuple[int, ...]
    # The tokenizer pads to these lengths already (model/runtime/query_encoder.py LENGTH_BUCKETS).
    length_buckets: tuple[int, ...]

    def shape_for(self, batch: int, length: int) -> tuple[int, int] | None:
        """(batch bucket, length) for a call, or None: eager. Lengths must be a bucket exactly,
        since padding a shorter call to a longer bucket changes nothing but the cost."""
        b = smallest_fit(batch, self.batch_buckets)
        if b is None or length not in self.length_buckets or batch < 1:
            return None
        return b, length

    def shapes(self) -> list[tuple[int, int]]:
        """Largest first: the first capture sizes the shared memory pool."""
        return sorted(((b, t) for b in self.batch_buckets for t in self.length_buckets),
                      key=lambda s: (-s[0] * s[1], -s[0]))


def eager_capture(forward: Forward, ids: Tensor, mask: Tensor) -> tuple[Callable[[], None], Tensor]:
    """CPU stand-in for a graph: replay re-runs `forward` on the static inputs into a static output."""
    out = forward(ids, mask).clone()

    def replay() -> None:
        out.copy_(forward(ids, mask))

    return replay, out


def cuda_capture(pool: object | None = None) -> Capture:
    """Record `forward` as a CUDA graph, warmed up and captured on a side stream of the inputs' device.

    Capture runs in `thread_local` error mode: a hot reload captures the new encoder's graphs in the
    reload thread while the serving thread keeps launching GPU work (the old encoder's replays, the
    torch search, their synchronising copies). The default `global` mode makes any such call from
    another thread during a capture an error (cudaErrorStreamCaptureUnsupported, invalidating the
    capture); thread-local mode only forbids the capturing thread itself from unsafe calls, and the
    forward makes none (no host sync, no allocation outside the graph's pool)."""

    def capture(forward: Forward, ids: Tensor, mask: Tensor) -> tuple[Callable[[], None], Tensor]:
        device = ids.device
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):  # cuBLAS workspaces, attention kernel choice, allocator blocks
                forward(ids, mask)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode=CAPTURE_ERROR_MODE):
            out = forward(ids, mask)  # (B, d) lives in the graph's pool: overwritten by each replay
        torch.cuda.current_stream(device).wait_stream(side)
        return graph.replay, out

    return capture


@dataclass
class _Graph:
    static: Tensor  # (2, Bb, T) int64 on the device: ids, mask
    staging: Tensor  # (2, Bb, T) int64 on the host (pinned on CUDA): filled, then one copy
    replay: Callable[[], None]
    out: Tensor  # (Bb, d) on the device, written by replay
    host_out: Tensor  # (Bb, d) float32 on the host (pinned on CUDA)


class GraphedForward:
    """Replays captured graphs for calls whose shape fits a bucket; None otherwise (run eager)."""

    def __init__(self, forward: Forward, plan: GraphPlan, device: torch.device, *, pad_id: int, cls_id: int,
                 sep_id: int, capture: Capture | None = None) -> None:
        self.plan, self.device = plan, device
        self.pad_id, self.cls_id, self.sep_id = pad_id, cls_id, sep_id
        if capture is None:
            capture = cuda_capture(torch.cuda.graph_pool_handle())
        pin = device.type == "cuda"
        self.graphs: dict[tuple[int, int], _Graph] = {}
        for b, t in plan.shapes():
            staging = torch.empty((2, b, t), dtype=torch.int64, pin_memory=pin)  # (2, Bb, T)
            self._fill_padding(staging, 0, t)
            static = staging.to(device)  # (2, Bb, T)
            replay, out = capture(forward, static[0], static[1])
            host_out = torch.empty(out.shape, dtype=torch.float32, pin_memory=pin)  # (Bb, d)
            self.graphs[(b, t)] = _Graph(static, staging, replay, out, host_out)
        self.replays = 0  # calls answered by a graph (tests and metrics read it)

    def _fill_padding(self, staging: Tensor, n: int, length: int) -> None:
        """Rows n.. of a staging buffer become the dummy query [CLS] [SEP]."""
        staging[0, n:].fill_(self.pad_id)
        staging[1, n:].zero_()
        staging[0, n:, 0], staging[0, n:, 1] = self.cls_id, self.sep_id
        staging[1, n:, :2] = 1

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
        """(B, T) int64 host arrays -> (B, d) float32 host view of a reused buffer, or None."""
        batch, length = ids.shape
        shape = self.plan.shape_for(batch, length)
        if shape is None:
            return None
        with torch.inference_mode():  # the static tensors were made under it (at capture)
            return self._replay(self.graphs[shape], ids, mask, shape[0])

    def _replay(self, g: _Graph, ids: np.ndarray, mask: np.ndarray, bucket: int) -> np.ndarray:
        batch, length = ids.shape
        host = g.staging.numpy()  # (2, Bb, T) shares memory with the staging tensor
        host[0, :batch], host[1, :batch] = ids, mask
        if batch < bucket:
            self._fill_padding(g.staging, batch, length)
        g.static.copy_(g.staging, non_blocking=True)  # one host->device copy
        g.replay()
        g.host_out.copy_(g.out, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        self.replays += 1
        return g.host_out.numpy()[:batch]
