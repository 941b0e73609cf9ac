"""Does a heatmap point at the lesion? The pointing game, map mass inside the lesion, and two baselines.

All functions take NumPy arrays on one pixel grid (the prepared image, in mammokit's benchmark):

* `pointing_hit`: the map's maximum inside the breast lies within `tolerance_mm` of the lesion mask
  (Zhang et al. 2018, "Top-down neural attention by excitation backprop": the pointing game, with a
  tolerance so that a peak on the lesion border counts). Distances are in millimetres with the grid's
  (row, column) pixel spacing, so anisotropic grids (a stretched resize) are measured correctly.
* `mass_inside`: the fraction of the map's (non-negative) mass within the breast that falls inside
  the lesion; a map that knows nothing scores about the lesion's share of the breast area.
* baselines: `centre_map` (a Gaussian on the breast's centre of mass: a model that always looks at
  the middle of the breast) and `random_map` (smoothed noise inside the breast: its peak is a random
  breast position).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def _check(heat: np.ndarray, *masks: np.ndarray) -> None:
    for mask in masks:
        if mask.shape != heat.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the heatmap's {heat.shape}")


def peak_position(heat: np.ndarray, breast: np.ndarray) -> tuple[int, int]:
    """(row, col) of the map's maximum within the breast (NaN = no value; first one on ties)."""
    _check(heat, breast)
    if not breast.any():
        raise ValueError("the breast mask is empty: there is no position to point at")
    inside = np.where(breast & np.isfinite(heat), heat, -np.inf)
    flat = int(np.argmax(inside))
    return flat // heat.shape[1], flat % heat.shape[1]


def lesion_distance_mm(lesion: np.ndarray, spacing_mm: tuple[float, float]) -> np.ndarray:
    """Distance in mm of every pixel centre to the nearest lesion pixel (0 inside the lesion)."""
    if not lesion.any():
        raise ValueError("the lesion mask is empty")
    return ndimage.distance_transform_edt(~lesion, sampling=spacing_mm)


def pointing_hit(
    heat: np.ndarray,
    lesion: np.ndarray,
    breast: np.ndarray,
    spacing_mm: tuple[float, float],
    tolerance_mm: float = 5.0,
) -> bool:
    """True when the map's peak within the breast is at most `tolerance_mm` from the lesion."""
    _check(heat, lesion, breast)
    row, col = peak_position(heat, breast)
    return bool(lesion_distance_mm(lesion, spacing_mm)[row, col] <= tolerance_mm)


def mass_inside(heat: np.ndarray, lesion: np.ndarray, breast: np.ndarray) -> float:
    """Share of the map's non-negative mass within the breast that lies inside the lesion (NaN if no mass)."""
    _check(heat, lesion, breast)
    values = np.where(breast, np.nan_to_num(np.clip(heat, 0.0, None), nan=0.0), 0.0)
    total = float(values.sum())
    return float(values[lesion].sum() / total) if total > 0 else math.nan


def centre_map(breast: np.ndarray) -> np.ndarray:
    """Baseline: an isotropic-in-pixels Gaussian on the breast's centre of mass, sigma = 1/4 of its extent."""
    if not breast.any():
        raise ValueError("the breast mask is empty")
    rows, cols = np.nonzero(breast)
    cy, cx = rows.mean(), cols.mean()
    sy, sx = max(1.0, np.ptp(rows) / 4.0), max(1.0, np.ptp(cols) / 4.0)
    yy, xx = np.mgrid[: breast.shape[0], : breast.shape[1]]
    return np.exp(-0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2)).astype(np.float32) * breast


def random_map(breast: np.ndarray, rng: np.random.Generator, smooth_px: float = 4.0) -> np.ndarray:
    """Baseline: white noise smoothed by a Gaussian of `smooth_px` (blobs about a heatmap's size), in [0, 1]."""
    noise = ndimage.gaussian_filter(rng.random(breast.shape, dtype=np.float32), smooth_px)
    lo, hi = float(noise.min()), float(noise.max())
    return ((noise - lo) / max(hi - lo, 1e-12)).astype(np.float32) * breast


def wilson_interval(hits: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion hits / n (NaN, NaN for n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    from scipy.stats import norm

    z = float(norm.ppf(1.0 - alpha / 2.0))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
