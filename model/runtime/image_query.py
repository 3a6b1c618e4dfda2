"""The serving half of the photo view: a shopper's photo in, a unit vector in the listings' space out.

Search by photo (POST /search/image) encodes the uploaded photo exactly as the build encoded the
listings' photos: the same preprocessing (model/encoders/photos.py `decode_image`: EXIF rotation, alpha on
white, shorter side to 224 px, centre crop), the same frozen EfficientNet-Lite0 backbone, then one
of the version's TRAINED photo projections (model/towers.py `ImageHead`, read from the version's
model.safetensors). Cross-view alignment during training puts a photo's projection next to the
fused vector of its listing, so the photo searches the same fused index as a text query.

Two heads, one per photo view type the model was trained on:
  primary  the primary-photo head (catalogue / studio shots: the listing's first photo);
  other    the other-photo head (extra angles, the item in use, room scenes).
Which one a shopper's photo goes through is a request option (`head`) with a measured default
(service/serving/settings.py `image_head`; docs/RESULTS.md "Search by photo").

The backbone does not depend on the version: one per (feature key, device, backend) in the
process, shared by every loaded version (a reload loads only the heads, ~3 MB). It runs on the
device the query encoder uses: fp16 torch on CUDA; on CPU onnxruntime (checked against torch on a
probe batch at load, as the build checks it) with torch as the fallback, the torch copy dropped
once ONNX runs it. Nothing is written to disk: the bytes are decoded from memory, the ONNX graph is
exported in memory, and no feature cache is read or written for a query photo.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.checkpoint import load_image_heads
from model.config import IMAGE, IMAGE_OTHER, ImageConfig
from model.encoders.image_features import ImageFeaturizer, feature_key
from model.encoders.photos import MAX_PIXELS, ImageError, decode_image
from model.encoders.weights import backbone_digest

log = logging.getLogger(__name__)

# Request names of the two photo heads -> their view types (model/config.py).
HEADS: dict[str, int] = {"primary": IMAGE, "other": IMAGE_OTHER}
# What an upload may be (Pillow format names). Pillow opens many more (EPS runs Ghostscript, TIFF
# and the raw formats have a long CVE history); a shopper's photo is one of these.
FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


class PhotoUnavailable(RuntimeError):
    """This version cannot encode photos (built without photos, another backbone, no weights)."""


def image_backend(device: torch.device, requested: str = "auto") -> str:
    """The backbone runtime for `device`: torch on CUDA (fp16), `requested` on CPU (auto = ONNX
    when it matches torch, else torch)."""
    if requested not in ("auto", "torch", "onnx"):
        raise ValueError(f"image backend: {requested!r} is not auto, torch or onnx")
    if device.type != "cpu":
        return "torch"
    return requested


@functools.lru_cache(maxsize=4)
def shared_backbone(cfg: ImageConfig, device: str, backend: str, batch_size: int) -> ImageFeaturizer:
    """One frozen backbone per (config, device, backend, batch) in the process (versions share it)."""
    return ImageFeaturizer(cfg, device=device, cache_dir=None, batch_size=batch_size, backend=backend,
                           keep_torch=False)


def probe_png(size: int = 64, seed: int = 0) -> bytes:
    """A small deterministic PNG (warm-up and tests): smooth colour gradients plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)  # (size, size) each
    rgb = np.stack([x, y, 1 - x * y], axis=-1) * 200 + rng.integers(0, 55, (size, size, 3))  # (size, size, 3)
    buf = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


class PhotoEncoder:
    """Photo bytes -> (d,) unit vectors through the backbone and one of a version's photo heads."""

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu", *, backend: str = "auto",
                 batch_size: int = 8, max_pixels: int = MAX_PIXELS, formats: Sequence[str] | None = FORMATS,
                 expect_backbone: str | None = None):
        """expect_backbone: the backbone digest the version's photos were featurised with (its
        manifest's `image_backbone_digest`): a different local backbone is refused, since its
        features would land elsewhere in the space."""
        self.device = torch.device(device)
        self.heads, cfg = load_image_heads(weights, self.device)
        self.cfg = cfg.image
        self.dim = cfg.tower.dim
        self.max_pixels, self.formats = max_pixels, tuple(formats) if formats else None
        try:
            digest = backbone_digest(self.cfg)
        except FileNotFoundError as e:
            raise PhotoUnavailable(f"no image backbone weights here ({e})") from None
        if expect_backbone is not None and digest != expect_backbone:
            raise PhotoUnavailable(f"the version's photos were featurised with backbone {expect_backbone[:12]}, "
                                   f"the weights here are {digest[:12]}")
        self.key = feature_key(self.cfg)
        self.backbone = shared_backbone(self.cfg, str(self.device), image_backend(self.device, backend), batch_size)
        # heads in fp32 on the device; the backbone's fp16 features are cast up first
        self._dtype = next(iter(self.heads.values())).fc1.weight.dtype

    @property
    def describe(self) -> str:
        return self.backbone.describe

    def decode(self, data: bytes) -> np.ndarray:
        """Bytes -> (3, S, S) float32; ImageError (not an image, corrupt) or ImageTooLarge."""
        return decode_image(data, self.cfg, name="image", max_pixels=self.max_pixels, formats=self.formats)

    def project(self, features: np.ndarray, head: str) -> np.ndarray:
        """(b, 1280) backbone features -> (b, d) float32 unit vectors through `head`."""
        if head not in HEADS:
            raise ValueError(f"head: {head!r} is not one of {', '.join(HEADS)}")
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(features)).to(self.device, self._dtype)  # (b, 1280)
            z = F.normalize(self.heads[HEADS[head]](x).float(), dim=-1)  # (b, d)
            return z.cpu().numpy()

    def encode(self, images: Sequence[bytes], heads: Sequence[str]) -> list[np.ndarray | ImageError]:
        """One batch of photos -> per photo its (d,) unit vector, or the ImageError that refused it
        (one bad photo never fails the others)."""
        out: list[np.ndarray | ImageError] = []
        arrays: list[np.ndarray] = []
        where: list[int] = []
        for i, data in enumerate(images):
            try:
                arrays.append(self.decode(data))
                where.append(i)
            except ImageError as e:
                out.append(e)
                continue
            out.append(np.empty(0, np.float32))  # placeholder, filled below
        if arrays:
            feats = self.backbone.features(np.stack(arrays))  # (b, 1280)
            for head in sorted({heads[i] for i in where}):
                rows = [j for j, i in enumerate(where) if heads[i] == head]
                vecs = self.project(feats[rows], head)  # (r, d)
                for j, v in zip(rows, vecs, strict=True):
                    out[where[j]] = v
        return out
