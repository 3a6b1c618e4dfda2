"""Photos for the sample catalog: category silhouettes painted with a colour and a pattern.

Three kinds of photo, so that an image view carries some attributes and not others
(docs/SAMPLE_CATALOG.md says why):

- `studio`: the category's shape filled with the colour and pattern, on a light background;
- `packaging`: the same shape as a grey silhouette on kraft paper: category yes, colour/pattern no;
- `closeup`: a swatch of the colour and pattern filling most of the frame, with a small badge
  showing the category's shape.

Every photo gets mild jitter (position, scale, rotation, brightness, noise) from the caller's
generator, so no two photos are pixel-identical templates; the same generator state gives the same
pixels, and `save_jpeg` writes them with fixed settings, so files are byte-identical across runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 128  # pixels per side: enough for a shape and a pattern, small enough to write 4k in seconds
JPEG_QUALITY = 90  # fixed: part of what makes the files byte-identical across runs
STUDIO_BG = 228  # light grey; white items stay visible thanks to the outline
KRAFT_RGB = (200, 176, 140)  # pale kraft paper: the packaging shots' background
SILHOUETTE_GREY = 132  # the packaging shots' item colour: not one of the catalog's colours

Box = tuple[float, float, float, float]
ToPixel = Callable[[float, float], tuple[float, float]]  # unit-square point -> pixel
Draw = Callable[[ImageDraw.ImageDraw, ToPixel, float], None]


# --------------------------------------------------------------------------- shapes
# Each shape draws itself in the unit square through `p(x, y) -> pixel` with `s` pixels per unit;
# fill 255 marks the item.


def _box(p: ToPixel, b: Box) -> list[tuple[float, float]]:
    return [p(b[0], b[1]), p(b[2], b[3])]


def _ring(d: ImageDraw.ImageDraw, p: ToPixel, s: float, b: Box, w: float) -> None:
    d.ellipse(_box(p, b), outline=255, width=max(1, round(w * s)))


def _poly(d: ImageDraw.ImageDraw, p: ToPixel, pts: list[tuple[float, float]]) -> None:
    d.polygon([p(x, y) for x, y in pts], fill=255)


def _mug(d: ImageDraw.ImageDraw, p: ToPixel, s: float) -> None:
    d.rounded_rectangle(_box(p, (0.22, 0.3, 0.66, 0.8)), radius=0.04 * s, fill=255)
    _ring(d, p, s, (0.56, 0.4, 0.84, 0.68), 0.07)


def _scarf(d: ImageDraw.ImageDraw, p: ToPixel, s: float) -> None:
    _ring(d, p, s, (0.28, 0.08, 0.72, 0.36), 0.09)
    d.rectangle(_box(p, (0.3, 0.22, 0.47, 0.82)), fill=255)
    d.rectangle(_box(p, (0.53, 0.28, 0.7, 0.88)), fill=255)
    for x0, y0 in ((0.3, 0.82), (0.53, 0.88)):  # fringe
        for i in range(5):
            x = x0 + 0.02 + i * 0.033
            d.line([p(x, y0), p(x, y0 + 0.07)], fill=255, width=max(1, round(0.012 * s)))


def _tshirt(d: ImageDraw.ImageDraw, p: ToPixel, s: float) -> None:
    _poly(d, p, [(0.2, 0.22), (0.38, 0.14), (0.44, 0.19), (0.5, 0.21), (0.56, 0.19), (0.62, 0.14),
                 (0.8, 0.22), (0.9, 0.38), (0.76, 0.44), (0.72, 0.38), (0.72, 0.86), (0.28, 0.86),
                 (0.28, 0.38), (0.24, 0.44), (0.1, 0.38)])


def _necklace(d: ImageDraw.ImageDraw, p: ToPixel, s: float) -> None:
    _ring(d, p, s, (0.24, 0.08, 0.76, 0.64), 0.025)
    d.ellipse(_box(p, (0.36, 0.52, 0.64, 0.86)), fill=255)


def _poster(d: ImageDraw.ImageDraw, p: ToPixel, s: float) -> None:
    d.rectangle(_box(p, (0.24, 0.1, 0.76, 0.9)), fill=255)


def _tote(d: ImageDraw.ImageDraw, p: ToPixel, s: float) -> None:
    _ring(d, p, s, (0.33, 0.12, 0.67, 0.62), 0.05)
    _poly(d, p, [(0.2, 0.38), (0.8, 0.38), (0.76, 0.9), (0.24, 0.9)])


def _candle(d: ImageDraw.ImageDraw, p: ToPixel, s: float) -> None:
    d.rectangle(_box(p, (0.34, 0.34, 0.66, 0.9)), fill=255)
    d.ellipse(_box(p, (0.34, 0.29, 0.66, 0.39)), fill=255)
    d.line([p(0.5, 0.3), p(0.5, 0.22)], fill=255, width=max(1, round(0.015 * s)))  # wick
    _poly(d, p, [(0.5, 0.04), (0.545, 0.15), (0.5, 0.21), (0.455, 0.15)])  # flame


def _cushion(d: ImageDraw.ImageDraw, p: ToPixel, s: float) -> None:
    _poly(d, p, [(0.15, 0.15), (0.5, 0.21), (0.85, 0.15), (0.79, 0.5), (0.85, 0.85), (0.5, 0.79),
                 (0.15, 0.85), (0.21, 0.5)])


def _vase(d: ImageDraw.ImageDraw, p: ToPixel, s: float) -> None:
    _poly(d, p, [(0.43, 0.12), (0.57, 0.12), (0.57, 0.24), (0.72, 0.42), (0.74, 0.62), (0.64, 0.88),
                 (0.36, 0.88), (0.26, 0.62), (0.28, 0.42), (0.43, 0.24)])
    d.ellipse(_box(p, (0.39, 0.09, 0.61, 0.15)), fill=255)


def _beanie(d: ImageDraw.ImageDraw, p: ToPixel, s: float) -> None:
    d.chord(_box(p, (0.2, 0.22, 0.8, 0.98)), 180, 360, fill=255)
    d.rectangle(_box(p, (0.18, 0.58, 0.82, 0.78)), fill=255)
    d.ellipse(_box(p, (0.41, 0.1, 0.59, 0.28)), fill=255)


def _socks(d: ImageDraw.ImageDraw, p: ToPixel, s: float) -> None:
    d.rectangle(_box(p, (0.34, 0.1, 0.58, 0.62)), fill=255)
    _poly(d, p, [(0.34, 0.55), (0.58, 0.55), (0.8, 0.7), (0.82, 0.83), (0.74, 0.9), (0.42, 0.9), (0.34, 0.8)])


def _earrings(d: ImageDraw.ImageDraw, p: ToPixel, s: float) -> None:
    for x in (0.3, 0.7):
        _ring(d, p, s, (x - 0.06, 0.12, x + 0.06, 0.26), 0.02)
        _poly(d, p, [(x, 0.3), (x + 0.13, 0.62), (x - 0.13, 0.62)])
        d.ellipse(_box(p, (x - 0.13, 0.5, x + 0.13, 0.78)), fill=255)


SHAPES: dict[str, Draw] = {
    "mug": _mug, "scarf": _scarf, "t-shirt": _tshirt, "necklace": _necklace, "poster": _poster,
    "tote bag": _tote, "candle": _candle, "cushion": _cushion, "vase": _vase, "beanie": _beanie,
    "socks": _socks, "earrings": _earrings,
}


def shape_mask(category: str, rng: np.random.Generator, *, size: int = SIZE, scale: float = 0.8,
               jitter: bool = True) -> Image.Image:
    """An 'L' mask (255 = item) of the category's shape, jittered in position, scale and angle."""
    if category not in SHAPES:
        raise ValueError(f"category: no shape for {category!r} (known: {', '.join(SHAPES)})")
    if jitter:
        scale *= rng.uniform(0.88, 1.08)
        cx, cy = size / 2 + rng.uniform(-0.06, 0.06, size=2) * size
        angle = rng.uniform(-12.0, 12.0)
    else:
        cx = cy = size / 2
        angle = 0.0
    s = scale * size

    def p(x: float, y: float) -> tuple[float, float]:
        return cx + (x - 0.5) * s, cy + (y - 0.5) * s

    mask = Image.new("L", (size, size), 0)
    SHAPES[category](ImageDraw.Draw(mask), p, s)
    return mask.rotate(angle, resample=Image.Resampling.BILINEAR, center=(cx, cy)) if angle else mask


# --------------------------------------------------------------------------- patterns
# Pixel arrays are channel-first, (3, H, W) float32, and masks (H, W): numpy broadcasts a mask over
# the leading channel axis in long contiguous runs, while (H, W, 3) arrays make it loop 3 at a time
# (about 20x slower here).


def secondary_rgb(rgb: tuple[int, int, int]) -> np.ndarray:
    """The pattern's second tone: a shade (light colours) or tint (dark ones) of the same hue,
    so the listing's colour stays the colour a shopper would name."""
    c = np.asarray(rgb, dtype=np.float32)  # (3,)
    lum = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
    return c * 0.55 if lum > 150 else c + (255.0 - c) * 0.55  # (3,)


@lru_cache(maxsize=4)
def _grid(size: int) -> np.ndarray:
    grid = np.mgrid[0:size, 0:size].astype(np.float32)  # (2, H, W): y, x
    grid.flags.writeable = False
    return grid


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)  # x % 1.0, without numpy's slow float modulo


def pattern_mask(pattern: str, rng: np.random.Generator, *, size: int = SIZE, period: float = 14.0) -> np.ndarray:
    """(size, size) bool: where the pattern's second tone goes.

    The pattern lives on a grid rotated by a small angle, `period` pixels per repeat, with a random
    phase; (u, v) are coordinates in repeats along and across it.
    """
    angle = math.radians(rng.uniform(-20.0, 20.0))
    period *= rng.uniform(0.85, 1.15)
    cos, sin = math.cos(angle) / period, math.sin(angle) / period  # Python floats keep the grid float32
    phase_u, phase_v = rng.uniform(0.0, 1.0, size=2).tolist()
    if pattern == "plain":
        return np.zeros((size, size), dtype=bool)
    yy, xx = _grid(size)  # (H, W) each
    v = yy * cos - xx * sin + phase_v  # (H, W)
    if pattern == "striped":
        return _frac(v) < 0.4
    u = xx * cos + yy * sin + phase_u  # (H, W)
    if pattern == "checkered":
        return (np.floor(u) + np.floor(v)).astype(np.int32) % 2 == 1
    if pattern == "zigzag":
        tri = np.abs(_frac(u) - 0.5)  # (H, W) triangle wave in [0, 0.5]
        return _frac(v + 1.2 * tri) < 0.35
    if pattern not in ("polka dot", "floral"):
        raise ValueError(f"pattern: cannot draw {pattern!r}")
    odd_row = (np.floor(v).astype(np.int32) % 2).astype(np.float32)  # (H, W)
    lu = _frac(u + 0.5 * odd_row) - 0.5  # (H, W) every other row offset by half a repeat
    lv = _frac(v) - 0.5  # (H, W)
    r2 = lu * lu + lv * lv  # (H, W) squared distance to the cell centre
    if pattern == "polka dot":
        return r2 < 0.24**2
    # a five-petal rose curve, r < 0.42 (0.5 + 0.5 |cos 2.5θ|), with an open centre
    c = lu / np.sqrt(r2 + 1e-6)  # (H, W) cos θ
    c2 = c * c  # (H, W)
    cos5 = c * (c2 * (16.0 * c2 - 20.0) + 5.0)  # (H, W) cos 5θ
    petal = 0.42 * (0.5 + 0.5 * np.sqrt(np.clip(0.5 + 0.5 * cos5, 0.0, 1.0)))  # (H, W)
    return (r2 < petal * petal) & (r2 > 0.1**2)


def pattern_texture(pattern: str, rgb: tuple[int, int, int], rng: np.random.Generator, *,
                    size: int = SIZE, period: float = 14.0) -> np.ndarray:
    """(3, size, size) float32: the colour, with the pattern in its second tone."""
    on = pattern_mask(pattern, rng, size=size, period=period)  # (H, W)
    base = np.asarray(rgb, dtype=np.float32)[:, None, None]  # (3, 1, 1)
    delta = secondary_rgb(rgb)[:, None, None] - base  # (3, 1, 1)
    return base + on.astype(np.float32) * delta  # (3, H, W)


# --------------------------------------------------------------------------- compositing


def _mask_array(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask, dtype=np.float32) * np.float32(1 / 255)  # (H, W) in [0, 1]


def _composite(bg: np.ndarray, fg: np.ndarray, mask: Image.Image, *, outline: float = 70.0) -> np.ndarray:
    """(3, H, W): the item over the background with a soft drop shadow and a dark outline (so
    white items still read on a light background)."""
    shadow = mask.transform(mask.size, Image.Transform.AFFINE, (1, 0, -3, 0, 1, -3))
    img = bg * (1.0 - 0.25 * _mask_array(shadow.filter(ImageFilter.BoxBlur(2))))  # (3, H, W)
    img += (fg - img) * _mask_array(mask)  # (3, H, W)
    edge = _mask_array(mask.filter(ImageFilter.FIND_EDGES)) * np.float32(0.6)  # (H, W)
    img += (outline - img) * edge  # (3, H, W)
    return img


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed field of unit Gaussian noise; photos take random crops of it (drawing fresh
    noise for every photo costs more than the rest of the painting)."""
    bank = np.random.default_rng(20240601).standard_normal((3, 2 * SIZE, 2 * SIZE), dtype=np.float32)
    bank.flags.writeable = False
    return bank  # (3, 2S, 2S)


def _noise(rng: np.random.Generator, channels: int, sigma: float) -> np.ndarray:
    """(channels, SIZE, SIZE) Gaussian noise with standard deviation sigma."""
    y, x = rng.integers(0, SIZE, size=2)
    return _noise_bank()[:channels, y:y + SIZE, x:x + SIZE] * np.float32(sigma)  # (C, H, W)


def _finish(img: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Brightness jitter and sensor noise, then 8-bit RGB."""
    img = img * np.float32(rng.uniform(0.9, 1.08)) + _noise(rng, 3, rng.uniform(2.0, 5.0))  # (3, H, W)
    img += 0.5  # round half up on the cast below
    np.clip(img, 0.0, 255.0, out=img)
    planes = img.astype(np.uint8)  # (3, H, W)
    return Image.merge("RGB", [Image.fromarray(plane, "L") for plane in planes])


def _background(level: tuple[float, ...] | np.ndarray, rng: np.random.Generator, grain: float) -> np.ndarray:
    """(3, H, W): a flat background with a gentle vertical gradient and some grain."""
    ramp = np.linspace(1.03, 0.95, SIZE, dtype=np.float32)[:, None] * rng.uniform(0.97, 1.03)  # (H, 1)
    bg = np.asarray(level, dtype=np.float32)[:, None, None] * ramp  # (3, H, 1)
    return bg + _noise(rng, 1, grain)  # (3, H, W)


def paint_studio(category: str, rgb: tuple[int, int, int], pattern: str, rng: np.random.Generator) -> Image.Image:
    """Studio shot: the category's shape in the colour and pattern on a light background."""
    g = STUDIO_BG + rng.uniform(-8, 8)
    bg = _background((g, g, g + rng.uniform(-4, 4)), rng, 1.5)
    mask = shape_mask(category, rng)
    fg = pattern_texture(pattern, rgb, rng, period=rng.uniform(11, 16))  # (3, H, W)
    return _finish(_composite(bg, fg, mask), rng)


def paint_packaging(category: str, rng: np.random.Generator) -> Image.Image:
    """Packaging shot: a grey silhouette on kraft paper with a strand of twine. It shows what the
    item is, never its colour or pattern."""
    tone = np.asarray(KRAFT_RGB, dtype=np.float32) + rng.uniform(-10, 10)  # (3,)
    bg = _background(tone, rng, 5.0)  # coarse grain: paper fibres
    mask = shape_mask(category, rng)
    grey = SILHOUETTE_GREY + rng.uniform(-15, 15)
    fg = np.full((3, SIZE, SIZE), grey, dtype=np.float32)  # (3, H, W)
    img = _composite(bg, fg, mask, outline=60.0)  # (3, H, W)
    twine = Image.new("L", (SIZE, SIZE), 0)
    y0, y1 = rng.uniform(0.1, 0.9, size=2) * SIZE
    ImageDraw.Draw(twine).line([(0, y0), (SIZE, y1)], fill=255, width=2)
    t = _mask_array(twine) * np.float32(0.7)  # (H, W)
    img += (np.asarray((235, 225, 200), dtype=np.float32)[:, None, None] - img) * t  # (3, H, W)
    return _finish(img, rng)


def paint_closeup(category: str, rgb: tuple[int, int, int], pattern: str, rng: np.random.Generator) -> Image.Image:
    """Close-up: a swatch of the colour and pattern filling most of the frame, with a small badge
    in a corner that hints at the category's shape."""
    g = STUDIO_BG + rng.uniform(-8, 8)
    img = _background((g, g, g), rng, 1.5)  # (3, H, W)
    tex = pattern_texture(pattern, rgb, rng, period=rng.uniform(22, 32))  # (3, H, W) magnified
    x0, y0 = rng.integers(2, 10, size=2)
    x1, y1 = SIZE - rng.integers(2, 10, size=2)
    shade = np.linspace(rng.uniform(0.92, 1.0), rng.uniform(1.0, 1.06), SIZE, dtype=np.float32)  # (W,)
    img[:, y0:y1, x0:x1] = (tex * shade)[:, y0:y1, x0:x1]  # (3, h, w) the swatch, lit from one side
    badge = 34
    bx = int(rng.choice([6, SIZE - badge - 6]))
    by = int(rng.choice([6, SIZE - badge - 6]))
    hint = _mask_array(shape_mask(category, rng, size=badge, scale=0.85, jitter=False))  # (b, b)
    img[:, by:by + badge, bx:bx + badge] = 242.0 + (90.0 - 242.0) * hint  # (3, b, b) light badge, dark shape
    return _finish(img, rng)


def save_jpeg(img: Image.Image, path: str | Path) -> None:
    """Fixed settings and no metadata, so the same pixels give the same bytes."""
    img.save(path, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False, subsampling=2)
