"""Paths in, (N, 1280) frozen EfficientNet-Lite0 features out, computed once per photo and cached on
disk under the sha256 of its bytes (so rebuilding an index re-reads the cache); bad photos are
reported, never fatal."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import ImageConfig
from model.encoders.image import FEATURE_DIM, EfficientNetLite0, export_onnx
from model.encoders.photos import MAX_PIXELS, PREPROCESS_VERSION, ImageError, _decode, _read
from model.encoders.weights import backbone_digest, weights_file

log = logging.getLogger(__name__)


def feature_key(cfg: ImageConfig) -> str:
    """Digest of everything that changes a feature: weights, resolution, scaling, preprocessing."""
    spec = {"arch": "efficientnet-lite0", "weights": backbone_digest(cfg), "image_size": cfg.image_size,
            "mean": cfg.mean, "std": cfg.std, "preprocess": PREPROCESS_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _atomic_write(path: Path, data: bytes) -> None:
    """Write a temp file beside `path`, then rename: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class FeatureResult:
    features: np.ndarray  # (N, 1280) float32, zeros where ok is False
    ok: np.ndarray  # (N,) bool
    errors: dict[int, str]  # index -> "path: reason", for every index that failed
    n_computed: int = 0  # distinct photos run through the network (cache misses)
    n_cached: int = 0  # distinct photos read from the cache


class ImageFeaturizer:
    """Paths in, (N, 1280) frozen-backbone features out; cached by content, bad photos reported.

    backend: "torch" (BN-folded, channels_last, inference_mode; fp16 on CUDA), "onnx" (the exported
    folded network on onnxruntime CPU), or "auto": onnx on CPU when onnxruntime imports and the
    export matches torch on a probe batch, else torch; always torch on CUDA.
    """

    def __init__(self, cfg: ImageConfig, device: str | torch.device = "cpu", cache_dir: Path | None = None,
                 batch_size: int = 32, backend: str = "auto", max_pixels: int = MAX_PIXELS,
                 keep_torch: bool = True) -> None:
        """keep_torch=False drops the torch copy of the network once an ONNX session runs it
        (a server's photo encoder: ~19 MB less per process)."""
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"backend: {backend!r} is not auto, torch or onnx")
        if cfg.feature_dim != FEATURE_DIM:
            raise ValueError(f"image.feature_dim: EfficientNet-Lite0 gives {FEATURE_DIM}, got {cfg.feature_dim}")
        if batch_size < 1 or cfg.image_size < 1 or cfg.std <= 0:
            raise ValueError(f"need batch_size >= 1, image.image_size >= 1, image.std > 0; got "
                             f"{batch_size}, {cfg.image_size}, {cfg.std}")
        self.cfg, self.batch_size, self.max_pixels = cfg, batch_size, max_pixels
        self.device = torch.device(device)
        if backend == "onnx" and self.device.type != "cpu":
            raise ValueError(f"backend: onnx runs on CPU only; use backend='torch' on {self.device}")
        self.key = feature_key(cfg)
        self.cache_dir = Path(cache_dir) / f"efficientnet-lite0-{self.key}" if cache_dir is not None else None
        self._dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self._model = EfficientNetLite0.from_file(weights_file(cfg)).fused()
        self._model.to(self.device, self._dtype, memory_format=torch.channels_last)
        self._session: Any = None  # onnxruntime.InferenceSession when backend == 'onnx'
        self.backend = "torch"
        if backend == "onnx":
            self._use_onnx()
        elif backend == "auto" and self.device.type == "cpu":
            try:
                self._use_onnx()
            except Exception as e:  # auto means "fastest that works": torch always works
                log.warning("image backbone: ONNX backend unavailable (%s: %s); using torch", type(e).__name__, e)
        if self.backend == "onnx" and not keep_torch:
            self._model = None  # type: ignore[assignment]

    def _use_onnx(self) -> None:
        """Export (once per feature key when there is a cache dir), load, and verify on a probe batch."""
        import onnxruntime as ort

        size = self.cfg.image_size
        path = self.cache_dir / "backbone.onnx" if self.cache_dir is not None else None
        if path is not None and not path.exists():
            _atomic_write(path, export_onnx(self._model, size))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = torch.get_num_threads(), 1
        model = str(path) if path is not None else export_onnx(self._model, size)
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (2, 3, S, S)
        want = self._run_torch(probe.numpy())  # (2, 1280)
        got = session.run(None, {"image": probe.numpy()})[0]  # (2, 1280)
        err = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
        if not err <= 1e-4:
            raise RuntimeError(f"ONNX backbone {path or '(in memory)'} differs from torch on a probe batch "
                               f"(relative error {err:.2e}); delete the file to re-export")
        self._session, self.backend = session, "onnx"

    def _run_torch(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device, self._dtype)  # (b, 3, S, S)
        with torch.inference_mode():
            return self._model(x.contiguous(memory_format=torch.channels_last)).float().cpu().numpy()  # (b, 1280)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """One batch through the network: (b, 3, S, S) float32 -> (b, 1280) float32."""
        if self.backend == "onnx":
            return self._session.run(None, {"image": batch})[0]
        return self._run_torch(batch)

    def features(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed images (N, 3, S, S) float32 -> (N, 1280) float32, in chunks of batch_size;
        nothing read from or written to the cache (a query photo)."""
        if not len(batch):
            return np.zeros((0, FEATURE_DIM), np.float32)
        parts = [self._run(np.ascontiguousarray(batch[i:i + self.batch_size], np.float32))
                 for i in range(0, len(batch), self.batch_size)]
        return np.concatenate(parts).astype(np.float32, copy=False)  # (N, 1280)

    @property
    def describe(self) -> str:
        """e.g. 'cpu/onnx', 'cuda/torch': for /readyz."""
        return f"{self.device.type}/{self.backend}"

    def _cache_get(self, sha: str) -> np.ndarray | None:
        if self.cache_dir is None:
            return None
        try:
            arr = np.load(self.cache_dir / sha[:2] / f"{sha}.npy", allow_pickle=False)  # (1280,)
        except (OSError, ValueError):  # missing, or unreadable: recompute and overwrite
            return None
        good = arr.shape == (FEATURE_DIM,) and arr.dtype == np.float32 and np.isfinite(arr).all()
        return arr if good else None

    def _cache_put(self, sha: str, feature: np.ndarray) -> None:
        if self.cache_dir is not None:
            buf = io.BytesIO()
            np.save(buf, feature, allow_pickle=False)
            _atomic_write(self.cache_dir / sha[:2] / f"{sha}.npy", buf.getvalue())

    def featurize(self, paths: Sequence[str | os.PathLike[str]], progress: bool = False) -> FeatureResult:
        """Features for every path; each distinct path is read once, each distinct content run once."""
        n, size = len(paths), self.cfg.image_size
        by_path: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            by_path.setdefault(os.fspath(p), []).append(i)
        path_sha: dict[str, str] = {}  # path -> sha256 of its bytes
        failed: dict[str, str] = {}  # path -> reason it could not be read
        done: dict[str, np.ndarray | str] = {}  # content sha -> feature (1280,) or reason it failed
        pending: dict[str, np.ndarray] = {}  # content sha -> preprocessed (3, S, S), next batch
        n_computed = n_cached = 0

        def flush() -> None:
            nonlocal n_computed
            if pending:
                feats = self._run(np.stack(list(pending.values())))  # (b, 1280)
                for sha, f in zip(pending, feats, strict=True):
                    done[sha] = np.asarray(f, np.float32)
                    self._cache_put(sha, done[sha])
                n_computed += len(pending)
                pending.clear()

        items: Iterable[str] = list(by_path)
        if progress:
            with contextlib.suppress(ImportError):  # tqdm is optional: no bar without it
                from tqdm.auto import tqdm

                items = tqdm(items, desc="image features", unit="img")
        for p in items:
            try:
                data = _read(p)
            except ImageError as e:
                failed[p] = e.reason
                continue
            sha = path_sha[p] = hashlib.sha256(data).hexdigest()
            if sha in done or sha in pending:
                continue
            if (cached := self._cache_get(sha)) is not None:
                done[sha], n_cached = cached, n_cached + 1
                continue
            try:
                pending[sha] = _decode(data, p, size, self.cfg.mean, self.cfg.std, self.max_pixels)
            except ImageError as e:
                done[sha] = e.reason
            if len(pending) >= self.batch_size:
                flush()
        flush()

        features, ok, errors = np.zeros((n, FEATURE_DIM), np.float32), np.zeros(n, bool), {}  # (N, 1280)
        for p, idx in by_path.items():
            value = failed[p] if p in failed else done[path_sha[p]]
            if isinstance(value, str):  # the reason is per content; name this path
                errors.update({i: f"{p}: {value}" for i in idx})
            else:
                features[idx], ok[idx] = value, True
        return FeatureResult(features, ok, errors, n_computed, n_cached)
