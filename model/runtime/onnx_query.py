"""The query tower as an ONNX graph for onnxruntime on CPU: fp32, or int8 weights.

`export_query_onnx(encoder, proj, int8=...)` writes the whole serving forward (MiniLM, masked mean
pool, query projection, L2 normalisation) as one graph: inputs `input_ids` and `attention_mask`
(B, T) int64, output `vectors` (B, d) float32. The protobuf is written here (field numbers from
onnx.proto), as `model/encoders/image.py` does for the image backbone: torch's exporters need the `onnx`
and `onnxscript` packages, which the serving image does not ship.

Standard opset-17 ops only, laid out the way onnxruntime's graph optimiser recognises them
(LayerNormalization, Erf-GELU, MatMul + Add bias), so `ORT_ENABLE_ALL` fuses them; the attention
scale 1/sqrt(head_dim) is folded into the query weights.

int8: at batch 1 the CPU cost is reading the weights (~42 MB fp32 for six layers), so quarter-size
weights are what makes it fast. Two encodings of a Linear exist (`plan`): `block` =
`com.microsoft.MatMulNBits` with 8 bits, one scale per 32 inputs of a column, activations quantised
per block too (accuracy_level 4); `dynamic` = `DynamicQuantizeMatMul`, one scale per column and one
per activation tensor. Measured on the sample catalog (bench/query_encoder.py; 1,000 queries,
top-10 overlap with fp32): all-block 0.989 (min cosine 0.9995), all-dynamic 0.952 (min cosine
0.989: too close to the 0.95 bar; fp32 for any one layer or kind, or SmoothQuant-style channel
smoothing, lifts it only to 0.96-0.97). `dynamic` is 2-4x faster at every batch size; `block` beats
fp32 only at batch 1 (onnxruntime's n-bit kernels favour one row). `INT8_PLAN` is all-block:
parity first. Embeddings, layer norms, attention products, pooling and the projection stay fp32.

`OnnxQueryRunner` owns the session and pre-allocated output buffers: a call binds the caller's
(static) input arrays and writes into a buffer kept per batch size, so a request allocates nothing
on the Python side; onnxruntime plans its own intermediate memory per shape (memory pattern + arena).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from model.encoders.text import MiniLM
from model.runtime.onnx_proto import MS_DOMAIN, GraphBuilder

# Additive attention bias at padded keys: large enough that exp() is exactly 0 in fp32.
MASK_BIAS = -1e9
LINEAR_KINDS = ("qkv", "attn_out", "ffn_in", "ffn_out", "proj")
QUANT_MODES = ("fp32", "dynamic", "block")
# Weights per quantisation block of the `block` mode (input rows sharing one scale).
BLOCK = 32
INT8_PLAN = {"qkv": "block", "attn_out": "block", "ffn_in": "block", "ffn_out": "block"}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) float -> int8 (K, N) and one symmetric scale per output column (N,)."""
    scale = np.abs(w).max(axis=0) / 127.0  # (N,)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # (N,) an all-zero column stays zero
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)  # (K, N)
    return q, scale


def quantize_blocks(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) float -> MatMulNBits' layout: uint8 (N, K/block, block) with zero point 128, and one
    symmetric scale per (column, block) flattened to (N * K/block,)."""
    K, N = w.shape
    if K % block:
        raise ValueError(f"block: {block} does not divide the input width {K}")
    wt = w.T.reshape(N, K // block, block)  # (N, K/b, b)
    scale = np.abs(wt).max(-1) / 127.0  # (N, K/b)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = (np.clip(np.rint(wt / scale[..., None]), -127, 127) + 128).astype(np.uint8)  # (N, K/b, b)
    return q, scale.reshape(-1)


def export_query_onnx(encoder: MiniLM, proj: nn.Linear, *, int8: bool = False,
                      plan: dict[str, str] | None = None) -> bytes:
    """Serialise encoder + mean pool + projection + normalise; see the module docstring.
    `plan` maps a Linear kind (qkv, attn_out, ffn_in, ffn_out, proj) to fp32 | dynamic | block;
    default: all fp32, or INT8_PLAN with int8=True."""
    plan = dict(plan if plan is not None else INT8_PLAN if int8 else {})
    if bad := {k: v for k, v in plan.items() if k not in LINEAR_KINDS or v not in QUANT_MODES}:
        raise ValueError(f"plan: unknown kind or mode {bad} (kinds {LINEAR_KINDS}, modes {QUANT_MODES})")
    c = encoder.config
    g = GraphBuilder("query_tower_int8" if int8 else "query_tower")
    hd = c.hidden // c.n_heads

    def linear(x: str, lin: nn.Linear, kind: str, scale: float = 1.0) -> str:
        w = _np(lin.weight).T * scale  # (in, out)
        b = _np(lin.bias) * scale if lin.bias is not None else None  # (out,)
        mode = plan.get(kind, "fp32")
        if mode == "dynamic":  # int8 weights per column, activations per tensor, per call
            q, s = quantize_columns(w)
            ins = [x, g.const(q), g.const(s), ""] + ([g.const(b)] if b is not None else [])
            return g.node("DynamicQuantizeMatMul", ins, domain=MS_DOMAIN)
        if mode == "block":  # int8 weights per block of BLOCK inputs; activations per block too
            q, s = quantize_blocks(w, BLOCK)
            ins = [x, g.const(q), g.const(s), "", ""] + ([g.const(b)] if b is not None else [])
            return g.node("MatMulNBits", ins, domain=MS_DOMAIN, K=w.shape[0], N=w.shape[1], bits=8,
                          block_size=BLOCK, accuracy_level=4)
        y = g.node("MatMul", [x, g.const(w)])
        return g.node("Add", [y, g.const(b)]) if b is not None else y

    def layer_norm(x: str, ln: nn.LayerNorm) -> str:
        return g.node("LayerNormalization", [x, g.const(_np(ln.weight)), g.const(_np(ln.bias))],
                      axis=-1, epsilon=float(ln.eps))

    e = encoder.embeddings
    # positions 0..T-1 plus segment 0, pre-added into one table: (max_position, H)
    pos_seg = _np(e.position_embeddings.weight) + _np(e.token_type_embeddings.weight[0])[None, :]
    T = g.node("Shape", ["input_ids"], start=1, end=2)  # (1,) = [T]
    pos = g.node("Slice", [g.const(pos_seg), g.const(np.array([0], np.int64)), T, g.const(np.array([0], np.int64))])
    x = g.node("Add", [g.node("Gather", [g.const(_np(e.word_embeddings.weight)), "input_ids"], axis=0), pos])  # (B, T, H)
    x = layer_norm(x, e.LayerNorm)  # (B, T, H)

    maskf = g.node("Cast", ["attention_mask"], to=1)  # (B, T) float
    # (1 - mask) * MASK_BIAS as (B, 1, 1, T): added to every head's scores
    bias = g.node("Mul", [g.node("Sub", [g.const(np.float32(1.0)), maskf]), g.const(np.float32(MASK_BIAS))])
    bias = g.node("Unsqueeze", [bias, g.const(np.array([1, 2], np.int64))])  # (B, 1, 1, T)
    heads = g.const(np.array([0, 0, c.n_heads, hd], np.int64))
    merged = g.const(np.array([0, 0, c.hidden], np.int64))

    for layer in encoder.layers:
        qkv = getattr(layer.attention, "self")  # noqa: B009 (`self` is the HF name)
        q = g.node("Transpose", [g.node("Reshape", [linear(x, qkv.query, "qkv", 1 / math.sqrt(hd)), heads])],
                   perm=[0, 2, 1, 3])  # (B, nh, T, hd), pre-scaled
        k = g.node("Transpose", [g.node("Reshape", [linear(x, qkv.key, "qkv"), heads])], perm=[0, 2, 3, 1])  # (B, nh, hd, T)
        v = g.node("Transpose", [g.node("Reshape", [linear(x, qkv.value, "qkv"), heads])], perm=[0, 2, 1, 3])  # (B, nh, T, hd)
        p = g.node("Softmax", [g.node("Add", [g.node("MatMul", [q, k]), bias])], axis=-1)  # (B, nh, T, T)
        ctx = g.node("Reshape", [g.node("Transpose", [g.node("MatMul", [p, v])], perm=[0, 2, 1, 3]), merged])  # (B, T, H)
        x = layer_norm(g.node("Add", [x, linear(ctx, layer.attention.output.dense, "attn_out")]), layer.attention.output.LayerNorm)
        h = linear(x, layer.intermediate.dense, "ffn_in")  # (B, T, I)
        # exact GELU: 0.5 h (1 + erf(h / sqrt 2)), the pattern ORT fuses into one Gelu
        erf = g.node("Erf", [g.node("Div", [h, g.const(np.float32(math.sqrt(2.0)))])])
        h = g.node("Mul", [g.node("Mul", [h, g.node("Add", [erf, g.const(np.float32(1.0))])]), g.const(np.float32(0.5))])
        x = layer_norm(g.node("Add", [x, linear(h, layer.output.dense, "ffn_out")]), layer.output.LayerNorm)  # (B, T, H)

    m = g.node("Unsqueeze", [maskf, g.const(np.array([2], np.int64))])  # (B, T, 1)
    axis1 = g.const(np.array([1], np.int64))
    total = g.node("ReduceSum", [g.node("Mul", [x, m]), axis1], keepdims=0)  # (B, H)
    count = g.node("Max", [g.node("ReduceSum", [m, axis1], keepdims=0), g.const(np.float32(1e-9))])  # (B, 1)
    pooled = g.node("Div", [total, count])  # (B, H)
    y = linear(pooled, proj, "proj")  # (B, d)
    norm = g.node("Max", [g.node("ReduceL2", [y], axes=[-1], keepdims=1),
                          g.const(np.float32(1e-12))])  # (B, 1), F.normalize's eps
    g.node("Div", [y, norm], out="vectors")  # (B, d)
    d = proj.out_features
    return g.model(inputs=[("input_ids", 7, ["B", "T"]), ("attention_mask", 7, ["B", "T"])],
                   outputs=[("vectors", 1, ["B", d])])


class OnnxQueryRunner:
    """One onnxruntime session over an exported query tower, with per-shape output buffers.

    Not thread-safe (one IOBinding, shared output buffers): the caller serialises calls, as the
    service's single batch worker does. The returned array is a view of a buffer that the next
    call with the same shape overwrites; copy it to keep it.
    """

    def __init__(self, model: bytes, dim: int, threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: the int8 graph's fusions are not warnings
        # Idle pool threads sleep instead of spinning: a spinning pool steals the cores that the
        # search (faiss, OpenMP) and the event loop need next, and burns a CPU quota (k8s limits).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.dim = dim
        self._ort = ort
        self._binding = self.session.io_binding()
        self._outputs: dict[int, tuple[np.ndarray, Any]] = {}

    def _output(self, batch: int) -> tuple[np.ndarray, Any]:
        got = self._outputs.get(batch)
        if got is None:
            buf = np.empty((batch, self.dim), dtype=np.float32)  # (B, d) kept for every later call
            got = self._outputs[batch] = (buf, self._ort.OrtValue.ortvalue_from_numpy(buf))
        return got

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, T) int64 C-contiguous arrays -> (B, d) float32 (a view of a reused buffer)."""
        buf, value = self._output(input_ids.shape[0])
        b = self._binding
        b.bind_cpu_input("input_ids", input_ids)
        b.bind_cpu_input("attention_mask", attention_mask)
        b.bind_ortvalue_output("vectors", value)
        self.session.run_with_iobinding(b)
        return buf
