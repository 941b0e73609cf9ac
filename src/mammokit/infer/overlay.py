"""Render heatmaps over the mammogram as RGB PNGs, on the original image's pixel grid.

The base is the original grey image (windowed to its own 0.5..99.5 % intensity range of non-zero
pixels); the heatmap is blended in with a colour map and an opacity proportional to the heat, so
cold regions show the plain mammogram and a reader sees the anatomy under every hot spot. Pixels
whose heat is NaN (outside the region the model saw, when the geometry marks it so) stay grey.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mammokit.utils.atomic import atomic_path


def window_to_u8(pixels: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Grey image -> uint8, windowed to the percentile range of its non-background pixels."""
    img = np.asarray(pixels, dtype=np.float32)
    sample = img[::4, ::4]  # percentiles of a 1/16 subsample: same window, 16x less sorting
    fg = sample[sample > sample.min()]
    if fg.size == 0:
        return np.zeros(img.shape, dtype=np.uint8)
    lo, hi = (float(v) for v in np.percentile(fg, [low_pct, high_pct]))
    scale = 255.0 / max(hi - lo, 1e-6)
    out = (img - np.float32(lo)) * np.float32(scale)
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)


def render_overlay(
    pixels: np.ndarray,
    heat: np.ndarray,
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
    vmin: float = 0.0,
    vmax: float = 1.0,
    max_side: int | None = None,
) -> np.ndarray:
    """Blend `heat` over `pixels`.

    Args:
        pixels: (H, W) original image (any numeric dtype, MONOCHROME2).
        heat: (H, W) heatmap on the same grid; NaN = no value.
        alpha: opacity at maximum heat; opacity scales linearly with the heat.
        cmap: a Matplotlib colour map name.
        vmin, vmax: heat values mapped to the ends of the colour map (probabilities: 0 and 1).
        max_side: if given, downscale (keeping the aspect ratio) so the longer side is at most this.

    Returns:
        (H', W', 3) uint8 RGB.
    """
    return np.asarray(_render(pixels, heat, alpha=alpha, cmap=cmap, vmin=vmin, vmax=vmax, max_side=max_side))


def _render(
    pixels: np.ndarray, heat: np.ndarray, *, alpha: float, cmap: str, vmin: float, vmax: float, max_side: int | None
) -> Image.Image:
    if pixels.shape != heat.shape:
        raise ValueError(f"heatmap shape {heat.shape} differs from image shape {pixels.shape}")
    from matplotlib import colormaps

    grey = Image.fromarray(window_to_u8(pixels))
    level = (np.asarray(heat, dtype=np.float32) - np.float32(vmin)) * np.float32(255.0 / max(vmax - vmin, 1e-12))
    np.clip(np.nan_to_num(level, nan=0.0, copy=False), 0.0, 255.0, out=level)  # NaN (no value) -> no heat
    index = Image.fromarray((level + 0.5).astype(np.uint8))
    if max_side and max(pixels.shape) > max_side:
        scale = max_side / max(pixels.shape)
        size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
        grey = grey.resize(size, Image.Resampling.BOX)
        index = index.resize(size, Image.Resampling.BOX)
    # Pillow does the per-pixel work in C: the colour map as a palette, the heat-proportional opacity
    # as a lookup table, and the blend as a masked composite (a 4560x2864 film in well under a second)
    lut = (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    colour = index.copy()
    colour.putpalette(lut.tobytes())
    opacity = index.point([round(alpha * v) for v in range(256)])
    return Image.composite(colour.convert("RGB"), grey.convert("RGB"), opacity)


def write_overlay(
    path: str | Path,
    pixels: np.ndarray,
    heat: np.ndarray,
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
    vmin: float = 0.0,
    vmax: float = 1.0,
    max_side: int | None = None,
) -> None:
    """Render (see `render_overlay`) and write an RGB PNG atomically."""
    image = _render(pixels, heat, alpha=alpha, cmap=cmap, vmin=vmin, vmax=vmax, max_side=max_side)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=1)
