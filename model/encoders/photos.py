"""A photo file or upload -> the backbone's input tensor: decoded in memory, EXIF-rotated, limited
in pixels, resized and scaled as EfficientNet-Lite0 was trained (`PREPROCESS_VERSION` keys the
feature cache)."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from model.config import ImageConfig

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
