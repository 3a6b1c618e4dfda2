"""The query encoder's runtimes: bucket selection and fallback of the CUDA-graph path (on CPU, with
an eager stand-in for capture), the hand-written ONNX graph against the torch module (the naive
reference), int8 parity on 1,000 queries, static buffers, backend selection. GPU-only parity
tests are marked `gpu` and skipped without CUDA."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from index.build import load_index
from model.encoders.text import BertConfig, MiniLM, mean_pool
from model.runtime import query_encoder as qe
from model.runtime.cuda_graphs import GraphPlan, batch_buckets, eager_capture, smallest_fit
from model.runtime.onnx_query import OnnxQueryRunner, export_query_onnx, quantize_blocks, quantize_columns
from model.runtime.query_encoder import EncoderOptions, QueryEncoder, resolve_backend
from model.sample.catalog import CATEGORIES, COLORS

CUDA = torch.cuda.is_available()


def thousand_queries() -> list[str]:
    """1,000 distinct shopper-like queries over the sample catalog's vocabulary, fixed order."""
    out: dict[str, None] = {}
    cats = sorted(CATEGORIES)
    for color, cat in itertools.product(sorted(COLORS), cats):
        out[f"{color} {cat}"] = None
        for material in CATEGORIES[cat].materials:
            out[f"{color} {material} {cat}"] = None
        for pattern in CATEGORIES[cat].patterns:
            out[f"{pattern} {cat} in {color}"] = None
    queries = list(out)
    assert len(queries) >= 1000
    return queries[:1000]


@pytest.fixture(scope="module")
def artifact(tiny_build):
    return tiny_build.path


def make(artifact, **kw) -> QueryEncoder:
    return QueryEncoder(artifact / "model.safetensors", artifact / "tokenizer.json", "cpu", EncoderOptions(**kw))


def encode_all(enc: QueryEncoder, queries: list[str], batch: int = 32) -> np.ndarray:
    return np.concatenate([enc.encode(queries[i:i + batch]) for i in range(0, len(queries), batch)])


def top10_overlap(index, a: np.ndarray, b: np.ndarray) -> float:
    _, ta = index.search(a, 10)
    _, tb = index.search(b, 10)
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(ta, tb, strict=True)]))


@pytest.fixture(scope="module")
def reference(artifact):
    """fp32 torch vectors of the 1,000 queries, and the tiny artifact's index."""
    queries = thousand_queries()
    return queries, encode_all(make(artifact), queries), load_index(str(artifact / "index.faiss"))


# ------------------------------------------------------------------ buckets (pure logic)


def test_batch_buckets_and_smallest_fit() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    with pytest.raises(ValueError, match="max_batch"):
        batch_buckets(0)
    assert smallest_fit(3, (1, 2, 4)) == 4 and smallest_fit(4, (4, 1, 2)) == 4 and smallest_fit(5, (1, 2, 4)) is None


def test_graph_plan_shapes_and_fallback() -> None:
    plan = GraphPlan(batch_buckets(8), (16, 32))
    assert plan.shape_for(1, 16) == (1, 16)
    assert plan.shape_for(3, 32) == (4, 32)
    assert plan.shape_for(8, 16) == (8, 16)
    assert plan.shape_for(9, 16) is None  # larger than the largest batch bucket: eager
    assert plan.shape_for(2, 24) is None  # not a length bucket: eager
    assert plan.shape_for(0, 16) is None
    shapes = plan.shapes()
    assert len(shapes) == 4 * 2 and shapes[0] == (8, 32)  # largest first sizes the pool
    assert [b * t for b, t in shapes] == sorted((b * t for b, t in shapes), reverse=True)


def test_resolve_backend() -> None:
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("auto", "cpu") == qe.CPU_AUTO
    assert resolve_backend("torch", "cuda") == "torch" and resolve_backend("onnx", "cpu") == "onnx"
    with pytest.raises(ValueError, match="CPU only"):
        resolve_backend("int8", "cuda")
    with pytest.raises(ValueError, match="not one of"):
        resolve_backend("tensorrt", "cpu")


# ------------------------------------------------------------------ graph replay on CPU


def test_graphed_forward_matches_eager_with_padding_and_falls_back(artifact) -> None:
    eager = make(artifact)
    graphed = QueryEncoder(artifact / "model.safetensors", artifact / "tokenizer.json", "cpu",
                           EncoderOptions(max_batch=4), capture=eager_capture)
    g = graphed.graphs
    assert g is not None and set(g.graphs) == {(b, t) for b in (1, 2, 4) for t in graphed.length_buckets}
    queries = thousand_queries()
    for n in (1, 4, 3):  # the 3-query call last: its padding row is checked below
        before = g.replays
        np.testing.assert_allclose(graphed.encode(queries[:n]), eager.encode(queries[:n]), atol=2e-5)
        assert g.replays == before + 1
    # padding rows of the 3-query call hold the dummy [CLS] [SEP] query, never an all-zero mask
    staging = g.graphs[(4, graphed.tokenize(queries[:3])[0].shape[1])].staging
    tok = graphed.tokenizer
    assert staging[0, 3, :2].tolist() == [tok.cls_id, tok.sep_id] and staging[1, 3].tolist()[:3] == [1, 1, 0]
    before = g.replays
    np.testing.assert_allclose(graphed.encode(queries[:5]), eager.encode(queries[:5]), atol=2e-5)  # 5 > 4
    ids, mask = graphed.tokenize(queries[:2])
    out = graphed.encode_tokens(ids[:, :7].copy(), mask[:, :7].copy())  # length 7 is no bucket
    assert g.replays == before and out.shape == (2, graphed.dim)


def test_tokenize_reuses_static_buffers(artifact) -> None:
    enc = make(artifact)
    a_ids, a_mask = enc.tokenize(["red mug", "blue scarf"])
    first = (a_ids.__array_interface__["data"][0], a_mask.__array_interface__["data"][0])
    b_ids, b_mask = enc.tokenize(["green vase"])
    assert np.shares_memory(a_ids, b_ids) and np.shares_memory(a_mask, b_mask)
    assert (b_ids.__array_interface__["data"][0], b_mask.__array_interface__["data"][0]) == first
    assert b_ids.shape == (1, 8) and b_mask[0].sum() == len(enc.tokenizer.ids(["green vase"], 32)[0])
    assert enc.length_buckets == (8, 16, 24, 32)  # CPU buckets up to max_query_tokens (32)


# ------------------------------------------------------------------ the ONNX graph


def _tiny_tower(seed: int = 0) -> tuple[MiniLM, torch.nn.Linear]:
    torch.manual_seed(seed)
    enc = MiniLM(BertConfig(vocab_size=97, hidden=32, n_layers=2, n_heads=4, intermediate=64, max_position=40)).eval()
    for p in enc.parameters():  # break the init's symmetry so every op matters
        p.data.add_(0.02 * torch.randn_like(p))
    return enc, torch.nn.Linear(32, 16, bias=False)


def _naive(enc: MiniLM, proj: torch.nn.Linear, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return F.normalize(proj(mean_pool(enc(ids, mask), mask)), dim=-1).numpy()  # (B, d)


def test_onnx_graph_matches_torch_with_padding() -> None:
    enc, proj = _tiny_tower()
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(1, 97, size=(5, 12)))  # (B, T)
    mask = torch.ones(5, 12, dtype=torch.int64)
    for i, n in enumerate((12, 7, 3, 1, 9)):
        mask[i, n:] = 0
        ids[i, n:] = 0
    ref = _naive(enc, proj, ids, mask)
    runner = OnnxQueryRunner(export_query_onnx(enc, proj), dim=16, threads=1)
    got = runner.run(ids.numpy(), mask.numpy())
    np.testing.assert_allclose(got, ref, atol=1e-5)
    out_buffer = got
    again = runner.run(ids.numpy(), mask.numpy())
    assert again is out_buffer  # same batch size: the same output buffer, no new allocation
    for plan in ({"qkv": "dynamic", "ffn_out": "dynamic"}, {"qkv": "block", "attn_out": "block"}):
        q = OnnxQueryRunner(export_query_onnx(enc, proj, plan=plan), dim=16, threads=1).run(ids.numpy(), mask.numpy())
        assert (q * ref).sum(1).min() > 0.98, plan
    with pytest.raises(ValueError, match="plan"):
        export_query_onnx(enc, proj, plan={"qkv": "int4"})


def test_weight_quantisers_against_naive_dequantisation() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(64, 24)).astype(np.float32)  # (K, N)
    w[:, 3] = 0.0  # an all-zero column stays exactly zero
    q, s = quantize_columns(w)
    np.testing.assert_allclose(q.astype(np.float32) * s, w, atol=float(s.max()) / 2 + 1e-7)
    assert (q[:, 3] == 0).all()
    qb, sb = quantize_blocks(w, 32)
    assert qb.shape == (24, 2, 32) and qb.dtype == np.uint8 and sb.shape == (48,)
    deq = ((qb.astype(np.float32) - 128) * sb.reshape(24, 2, 1)).reshape(24, 64).T  # (K, N)
    np.testing.assert_allclose(deq, w, atol=float(sb.max()) / 2 + 1e-7)
    with pytest.raises(ValueError, match="block"):
        quantize_blocks(w[:40], 32)


@pytest.mark.slow
def test_onnx_fp32_backend_matches_torch(artifact, reference) -> None:
    queries, ref, _ = reference
    enc = make(artifact, backend="onnx", threads=1)
    assert enc.describe == "cpu/onnx" and enc.encoder is None  # the torch copy is dropped
    got = encode_all(enc, queries[:200])
    assert (got * ref[:200]).sum(1).min() >= 0.9999


@pytest.mark.slow
def test_int8_backend_parity_on_1000_queries(artifact, reference) -> None:
    queries, ref, index = reference
    enc = make(artifact, backend="int8", threads=2)
    assert enc.describe == "cpu/int8"
    got = encode_all(enc, queries)
    cos = (got * ref).sum(1)
    assert cos.min() >= 0.99 and cos.mean() >= 0.998, (cos.min(), cos.mean())
    assert top10_overlap(index, ref, got) >= 0.95


def test_probe_failure_raises_or_falls_back(artifact, monkeypatch, caplog) -> None:
    monkeypatch.setitem(qe.PROBE_MIN_COSINE, "int8", 1.01)  # no int8 session can pass this
    with pytest.raises(RuntimeError, match="differs from torch"):
        make(artifact, backend="int8")
    monkeypatch.setattr(qe, "CPU_AUTO", "int8")
    with caplog.at_level(logging.WARNING, logger="model.runtime.query_encoder"):
        enc = make(artifact, backend="auto")
    assert enc.backend == "torch" and "using torch" in caplog.text
    assert enc.encode(["red mug"]).shape == (1, enc.dim)


# ------------------------------------------------------------------ GPU (skipped without CUDA)


def _gpu(artifact, graphs: bool) -> QueryEncoder:
    return QueryEncoder(artifact / "model.safetensors", artifact / "tokenizer.json", "cuda",
                        EncoderOptions(backend="torch", cuda_graphs=graphs, max_batch=32))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_graphs_match_eager_fp16(artifact, reference) -> None:
    queries, _, index = reference
    graphed, eager = _gpu(artifact, True), _gpu(artifact, False)
    assert graphed.describe == "cuda/torch+graphs" and eager.graphs is None
    a, b = encode_all(graphed, queries), encode_all(eager, queries)
    assert (a * b).sum(1).min() >= 0.9999
    _, ta = index.search(a, 10)
    _, tb = index.search(b, 10)
    assert (ta == tb).all()  # the same top-10, in the same order
    assert graphed.graphs is not None and graphed.graphs.replays >= len(queries) // 32


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_fp16_vs_cpu_fp32_top10(artifact, reference) -> None:
    queries, ref, index = reference
    got = encode_all(_gpu(artifact, True), queries)
    assert top10_overlap(index, ref, got) >= 0.95
