"""CUDA-graph capture during a hot reload (issue 15, item 6): capture runs in thread-local mode on a
side stream (checked on CPU against a recording stand-in for torch.cuda), and the graph encoder is
checked against the fp32 module on the probe queries, refused below its bar. The real capture while
another thread runs GPU work, and the fp16 parity figure, are `gpu` tests that skip on CPU."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
import torch

from model.runtime import cuda_graphs
from model.runtime import query_encoder as qe
from model.runtime.cuda_graphs import cuda_capture, eager_capture
from model.runtime.query_encoder import EncoderOptions, QueryEncoder

CUDA = torch.cuda.is_available()


class FakeCuda:
    """Records what `cuda_capture` asks of torch.cuda; the 'graph' replays the forward eagerly."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        fake = self

        class Stream:
            def __init__(self, device=None) -> None:
                self.device = device
                fake.events.append(("stream", device))

            def wait_stream(self, other) -> None:
                fake.events.append(("wait", self, other))

        class CUDAGraph:
            def replay(self) -> None:
                fake.events.append(("replay",))

        self.Stream, self.CUDAGraph = Stream, CUDAGraph
        self.default = self.current = Stream("default")
        self.events.clear()

    def current_stream(self, device=None):
        return self.current

    @contextlib.contextmanager
    def stream(self, s):
        before, self.current = self.current, s
        self.events.append(("on", s))
        yield
        self.current = before

    @contextlib.contextmanager
    def graph(self, g, pool=None, stream=None, capture_error_mode="global"):
        self.events.append(("capture", g, pool, stream, capture_error_mode))
        yield


def test_cuda_capture_is_thread_local_on_a_side_stream(monkeypatch) -> None:
    fake = FakeCuda()
    for name in ("Stream", "CUDAGraph", "current_stream", "stream", "graph"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    calls: list[object] = []

    def forward(ids, mask):
        calls.append(fake.current)
        return ids.float()

    ids = torch.ones((2, 4), dtype=torch.int64)
    replay, out = cuda_capture(pool="pool")(forward, ids, ids)
    side = next(e[1] for e in fake.events if e[0] == "on")
    capture = next(e for e in fake.events if e[0] == "capture")
    assert capture[2:] == ("pool", side, "thread_local")  # the default "global" mode refuses other threads' work
    assert calls[:3] == [side] * 3  # the warm-up ran on the side stream
    assert ("wait", side, fake.default) in fake.events  # the side stream waits for the inputs' copy
    assert ("wait", fake.default, side) in fake.events  # and the serving stream for the capture's warm-up
    assert out.shape == (2, 4)
    assert cuda_graphs.CAPTURE_ERROR_MODE == "thread_local"


@pytest.fixture(scope="module")
def artifact(tiny_build):
    return tiny_build.path


def _encoder(artifact, capture, **kw) -> QueryEncoder:
    return QueryEncoder(artifact / "model.safetensors", artifact / "tokenizer.json", "cpu",
                        EncoderOptions(max_batch=4, **kw), capture=capture)


def test_graph_encoder_parity_with_fp32_checked_at_load(artifact) -> None:
    enc = _encoder(artifact, eager_capture)  # the CPU stand-in: every probe batch replays a "graph"
    assert enc.graphs is not None and enc.graphs.replays == -(-len(qe.PROBES) // 4)
    assert enc.graph_min_cosine is not None and enc.graph_min_cosine >= 0.9999

    def broken(forward, ids, mask):  # a capture whose replay gets the right norm but the wrong vector
        out = forward(ids, mask).clone()

        def replay() -> None:
            out.copy_(forward(ids, mask).roll(1, dims=1))

        return replay, out

    with pytest.raises(RuntimeError, match="differs from the fp32 module"):
        _encoder(artifact, broken)
    assert _encoder(artifact, None).graph_min_cosine is None  # no graphs on CPU, no check


def _gpu(artifact, **kw) -> QueryEncoder:
    return QueryEncoder(artifact / "model.safetensors", artifact / "tokenizer.json", "cuda",
                        EncoderOptions(backend="torch", cuda_graphs=True, max_batch=16, **kw))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_graph_fp16_parity_with_fp32(artifact) -> None:
    enc = _gpu(artifact)
    assert enc.describe == "cuda/torch+graphs" and enc.graph_min_cosine >= qe.PROBE_MIN_COSINE["graphs"]
    cpu = QueryEncoder(artifact / "model.safetensors", artifact / "tokenizer.json", "cpu", EncoderOptions())
    qs = ["red ceramic mug", "blue wool scarf with stripes", "kids wooden toy train", "silver ring"] * 4
    assert (enc.encode(qs) * cpu.encode(qs)).sum(1).min() >= qe.PROBE_MIN_COSINE["graphs"]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_capture_while_another_thread_serves(artifact) -> None:
    """A hot reload: the new encoder captures in a thread while this one keeps encoding and
    multiplying on the GPU (with the default global capture mode this raises)."""
    old = _gpu(artifact)
    x = torch.randn((4096, 256), device="cuda")
    stop, errors = threading.Event(), []

    def serve() -> None:
        try:
            while not stop.is_set():
                old.encode(["red mug", "blue scarf"])
                float((x @ x.T).sum())  # a synchronising copy back, as the search's results are
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=serve)
    t.start()
    try:
        new = _gpu(artifact)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    a, b = new.encode(["gift", "red mug"]), old.encode(["gift", "red mug"])
    assert np.allclose(a, b, atol=2e-3)
