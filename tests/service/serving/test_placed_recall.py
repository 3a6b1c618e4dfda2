"""Tuned as served (issue 15, item 7): ANN recall measured again at load on the index as placed, on
seeded stored vectors with their own rows left out, against a naive reference; reported beside the
tuned figure in /readyz, through the HTTP route, for the CPU placement and for the torch placement
(CPU torch standing in for the GPU copy: the same code path measures it)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import wait_ready

import service.serving.engine as engine_mod
from index.build import build_index
from index.placed_recall import measure_placed_recall, recall_report
from index.search import FaissCpuSearcher, SearchResult, TorchCudaSearcher
from service.api.app import create_app
from service.serving.settings import Settings


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(12, d))[rng.integers(0, 12, n)] + 0.5 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def naive_recall(x: np.ndarray, own: np.ndarray, found: np.ndarray, k: int) -> float:
    """Per query: the share of its k returned rows (own row left out) whose exact score reaches the
    k-th best exact score among the other rows."""
    xf = x.astype(np.float32)
    hits = 0
    for i, r in enumerate(own):
        s = xf @ xf[r]
        s_other = np.delete(s, r)
        kth = np.sort(s_other)[::-1][k - 1]
        rows = [int(j) for j in found[i] if j != r][:k]
        hits += sum(s[j] >= kth - 1e-5 for j in rows)
    return hits / (k * len(own))


def test_placed_recall_against_a_naive_reference() -> None:
    x = clustered(2000, 24)
    built = build_index(x.astype(np.float32), "IVF16,Flat")
    exact = FaissCpuSearcher(build_index(x.astype(np.float32), "Flat").index, x)
    one_probe = FaissCpuSearcher(built.index, x, {"nprobe": 1})
    k, nq = 10, 60
    own = np.sort(np.random.default_rng(3).choice(len(x), nq, replace=False))
    for searcher in (exact, one_probe):
        got = measure_placed_recall(searcher, x, k, nq, seed=3)
        found = searcher.search(x[own].astype(np.float32), k + 1).rows
        assert got["n_queries"] == nq and got["k"] == k and got["placement"] == "faiss-cpu"
        assert got["recall"] == pytest.approx(naive_recall(x, own, found, k), abs=1e-9)
    assert measure_placed_recall(exact, x, k, nq, seed=3)["recall"] == 1.0  # its own row is not a hit
    assert measure_placed_recall(one_probe, x, k, nq, seed=3)["recall"] < 0.99
    # the report: the manifest's tuned figure, the placed one, and the CPU index on the same sample
    manifest = {"index_tuning": {"recall": 0.97, "k": k, "n_queries": 500, "queries": "judgments",
                                 "params": {"nprobe": 1}}, "index_params": {"nprobe": 1}}
    torch_placed = TorchCudaSearcher(x, device="cpu")
    rep = recall_report(manifest, torch_placed, x, nq, seed=3, cpu_index=built.index)
    assert rep["tuned"]["recall"] == 0.97 and rep["tuned"]["placement"] == "faiss-cpu"
    assert rep["as_placed"]["placement"] == "torch-cuda" and rep["as_placed"]["recall"] == 1.0
    assert rep["cpu_same_sample"]["recall"] == measure_placed_recall(one_probe, x, k, nq, seed=3)["recall"]
    assert recall_report({}, exact, x, 0) == {"tuned": None, "as_placed": None}


class Shifted(FaissCpuSearcher):
    """A placement whose copy of the vectors is off (as a lossy GPU copy would be): scores of a
    perturbed copy pick the rows, so recall against the stored vectors drops."""

    placement = "lossy-copy"

    def __init__(self, index, vectors, noisy) -> None:
        super().__init__(index, vectors)
        self.noisy = noisy

    def search(self, q: np.ndarray, k: int, allowed=None) -> SearchResult:
        s = q @ self.noisy.T  # (B, n)
        rows = np.argsort(-s, axis=1)[:, :k]
        return SearchResult(np.take_along_axis(s, rows, 1).astype(np.float32), rows.astype(np.int64))


@pytest.fixture
def served(artifacts_copy, monkeypatch):
    def client(placement: str):
        real = engine_mod.make_searcher

        def place(index, vectors, params=None, device="auto", **kw):
            if placement == "torch":
                return TorchCudaSearcher(vectors, device="cpu")
            if placement == "lossy":
                noisy = np.asarray(vectors, np.float32) + np.random.default_rng(0).normal(0, 0.2, vectors.shape)
                return Shifted(index, vectors, noisy.astype(np.float32))
            return real(index, vectors, params, device, **kw)

        monkeypatch.setattr(engine_mod, "make_searcher", place)
        settings = Settings(artifacts=artifacts_copy, reload_poll_s=0, placed_recall_queries=40, index_device="cpu")
        return TestClient(create_app(settings))

    return client


@pytest.mark.parametrize("placement", ["cpu", "torch", "lossy"])
def test_readyz_reports_tuned_and_as_placed_recall(served, tiny_build, placement: str) -> None:
    with served(placement) as c:
        body = wait_ready(c)
    ann = body["ann_recall"]
    tuning = tiny_build.manifest.get("index_tuning") or {}
    assert ann["tuned"] == (None if not tuning else ann["tuned"])
    if tuning:
        assert ann["tuned"]["recall"] == tuning["recall"] and ann["tuned"]["k"] == tuning["k"]
    placed = ann["as_placed"]
    assert placed["n_queries"] == 40 and placed["queries"].startswith("stored vectors")
    assert placed["placement"] == body["placement"]["index"]
    if placement == "lossy":
        assert placed["recall"] < 0.9  # measured, not copied from the manifest
        assert ann["cpu_same_sample"]["recall"] > placed["recall"]
    else:
        assert placed["recall"] == pytest.approx(1.0)  # exact placements (the tiny build is Flat)
    assert ("cpu_same_sample" in ann) == (placement != "cpu")
