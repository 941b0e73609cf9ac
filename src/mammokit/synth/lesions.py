"""Draw one lesion into an image, in place: masses (smooth or spiculated) and calcification clusters.

Every drawing works on a window around the lesion only, so the cost does not grow with the image size.
Shapes come from `default_rng([spec.shape_seed, ...])`, so a lesion has the same shape in its CC and MLO views.

Appearance rules (what a patch classifier must learn; see docs/synth.md):
* benign mass: round/oval, smooth circumscribed edge;
* malignant mass: irregular lobulated body with a blurred edge and radiating spicules;
* benign calcifications: few (3-7) coarse round specks spread over a wider cluster;
* malignant calcifications: many (16-30) fine pleomorphic (elongated, irregular) specks in a tight cluster.
Lesion size and contrast follow the same distributions for both pathologies of a kind, so a lesion's total
brightness does not give its pathology away to image-wide statistics.
"""

from __future__ import annotations

import numpy as np

from mammokit.synth.model import LesionSpec, RenderedLesion

# Contrast added on top of the tissue, in [0, 1] image units (tissue texture std is about 0.05-0.1).
MASS_CONTRAST = (0.24, 0.32)
CALC_CONTRAST = (0.45, 0.60)

# Speck radius as a fraction of the image height: scaled with the image so that specks survive the 2-4x
# downsizing of training (a 1152-row image has 6-9 px coarse and 2-3.5 px fine specks).
COARSE_SPECK = (0.0050, 0.0075)
FINE_SPECK = (0.0022, 0.0034)
MIN_SPECK_PX = 0.6  # below this a speck would vanish between pixel centres


def _window(
    center: tuple[float, float], half: float, shape: tuple[int, int]
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Slices of a square window around `center` (clipped to the image) and its local (dy, dx) grids."""
    cy, cx = center
    r0, r1 = max(int(np.floor(cy - half)), 0), min(int(np.ceil(cy + half)) + 1, shape[0])
    c0, c1 = max(int(np.floor(cx - half)), 0), min(int(np.ceil(cx + half)) + 1, shape[1])
    dy = (np.arange(r0, r1, dtype=np.float32) - np.float32(cy))[:, None]
    dx = (np.arange(c0, c1, dtype=np.float32) - np.float32(cx))[None, :]
    return slice(r0, r1), slice(c0, c1), dy, dx


def _harmonics(rng: np.random.Generator, spec: LesionSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(orders, amplitudes, phases) of the boundary-radius modulation r(θ) = r (1 + Σ a_k cos(kθ + φ_k))."""
    if spec.malignant:
        orders = np.arange(2, 9)
        amps = rng.uniform(0.05, 0.13, size=orders.size) / (1.0 + 0.12 * (orders - 2))
    else:
        orders = np.array([2, 3])
        elong = rng.uniform(0.12, 0.22) if spec.shape == "OVAL" else rng.uniform(0.0, 0.06)
        amps = np.array([elong, rng.uniform(0.0, 0.025)])
    phases = rng.uniform(0.0, 2.0 * np.pi, size=orders.size)
    return orders, amps, phases


def _boundary(theta: np.ndarray, radius: float, harmonics: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    orders, amps, phases = harmonics
    mod = np.ones_like(theta)
    for k, a, p in zip(orders, amps, phases, strict=True):
        mod += a * np.cos(k * theta + p)
    return radius * mod


def draw_mass(image: np.ndarray, spec: LesionSpec, center: tuple[float, float], radius: float) -> RenderedLesion:
    """Add a mass of body radius `radius` px at `center` (row, col) to `image` (float32, in place)."""
    rng = np.random.default_rng([spec.shape_seed, 1])
    harmonics = _harmonics(rng, spec)
    contrast = float(rng.uniform(*MASS_CONTRAST))
    if spec.malignant:
        # Spicule count and reach depend on the margin descriptor; the body edge is blurred (ill-defined).
        if "SPICULATED" in spec.margins and "ILL_DEFINED" not in spec.margins:
            n_spic, reach, edge = int(rng.integers(11, 19)), (1.0, 1.9), 0.10
        elif "SPICULATED" in spec.margins:
            n_spic, reach, edge = int(rng.integers(8, 13)), (0.8, 1.5), 0.14
        else:
            n_spic, reach, edge = int(rng.integers(5, 9)), (0.6, 1.1), 0.18
    else:
        n_spic, reach, edge = 0, (0.0, 0.0), 0.04 if spec.margins == "CIRCUMSCRIBED" else 0.08
    spic_theta = rng.uniform(0.0, 2.0 * np.pi, size=n_spic)
    spic_len = radius * rng.uniform(*reach, size=n_spic) if n_spic else np.zeros(0)
    spic_width = max(0.15 * radius, 1.0)  # half-width at the base, px

    half = radius * (1.3 + (reach[1] + 0.3 if n_spic else 0.0)) + 2.0
    rows, cols, dy, dx = _window(center, half, image.shape)
    rho = np.sqrt(dy * dy + dx * dx)
    theta = np.arctan2(dy, dx)
    rb = _boundary(theta, radius, harmonics).astype(np.float32)
    edge_px = max(edge * radius, 0.5)
    body = 1.0 / (1.0 + np.exp((rho - rb) / edge_px))
    dome = 0.8 + 0.2 * np.sqrt(np.clip(1.0 - (rho / rb) ** 2, 0.0, 1.0))
    value = body * dome
    spic_start = 0.6 * _boundary(spic_theta, radius, harmonics)  # spicules root inside the body edge
    for ang, length, start in zip(spic_theta, spic_len, spic_start, strict=True):
        # Distance of each pixel to the spicule segment, with a width tapering from base to tip.
        ux, uy = np.cos(ang), np.sin(ang)
        t = dx * ux + dy * uy - start
        d = np.abs(-dx * uy + dy * ux)
        frac = np.clip(t / length, 0.0, 1.0)
        width = spic_width * (1.0 - 0.75 * frac)
        inside = (t >= 0) & (t <= length)
        spic = np.where(inside, 0.9 * np.exp(-((d / width) ** 2)) * (1.0 - 0.4 * frac), 0.0)
        np.maximum(value, spic, out=value)
    image[rows, cols] += (contrast * value).astype(np.float32)

    mask = np.zeros(image.shape, dtype=bool)
    mask[rows, cols] = rho <= rb
    if not mask.any():  # sub-pixel lesion at a tiny image size: keep at least its centre pixel
        mask[
            int(np.clip(round(center[0]), 0, image.shape[0] - 1)), int(np.clip(round(center[1]), 0, image.shape[1] - 1))
        ] = True
    poly_theta = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
    poly_r = _boundary(poly_theta, radius, harmonics)
    polygon = np.stack([center[1] + poly_r * np.cos(poly_theta), center[0] + poly_r * np.sin(poly_theta)], axis=1)
    return RenderedLesion(spec=spec, mask=mask, center=center, radius=float(poly_r.max()), polygon=polygon)


def _speck_positions(rng: np.random.Generator, spec: LesionSpec, n: int, radius: float) -> np.ndarray:
    """(n, 2) speck offsets (dx, dy) in px inside a cluster of radius `radius`."""
    if "LINEAR" in spec.calc_type or "LINEAR" in spec.distribution:
        # Fine linear branching: specks strung along two or three branches through the cluster.
        n_branch = int(rng.integers(2, 4))
        branch = rng.integers(0, n_branch, size=n)
        angles = rng.uniform(0.0, np.pi, size=n_branch)[branch]
        t = rng.uniform(-1.0, 1.0, size=n) * radius
        jitter = rng.normal(0.0, 0.12 * radius, size=n)
        return np.stack([t * np.cos(angles) - jitter * np.sin(angles), t * np.sin(angles) + jitter * np.cos(angles)], 1)
    # Uniform in the disc (square root of a uniform draw for the radius); specks may touch, as in real clusters.
    r = radius * np.sqrt(rng.uniform(0.0, 1.0, size=n))
    a = rng.uniform(0.0, 2.0 * np.pi, size=n)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def draw_calcifications(
    image: np.ndarray, spec: LesionSpec, center: tuple[float, float], radius: float
) -> RenderedLesion:
    """Add a calcification cluster of radius `radius` px at `center` (row, col) to `image` (in place)."""
    rng = np.random.default_rng([spec.shape_seed, 2])
    height = image.shape[0]
    contrast = float(rng.uniform(*CALC_CONTRAST))
    if spec.malignant:
        n = int(rng.integers(16, 31))
        size = np.maximum(height * rng.uniform(*FINE_SPECK, size=n), MIN_SPECK_PX)
        aspect = rng.uniform(1.4, 3.0, size=n)  # pleomorphic: elongated, varied
    else:
        n = int(rng.integers(3, 8))
        size = np.maximum(height * rng.uniform(*COARSE_SPECK, size=n), MIN_SPECK_PX)
        aspect = rng.uniform(1.0, 1.25, size=n)  # round and regular
    orient = rng.uniform(0.0, np.pi, size=n)
    offsets = _speck_positions(rng, spec, n, radius)
    brightness = rng.uniform(0.75, 1.0, size=n)

    reach = float(np.hypot(offsets[:, 0], offsets[:, 1]).max() + 3.0 * size.max()) + 1.0
    rows, cols, dy, dx = _window(center, reach, image.shape)
    value = np.zeros((dy.shape[0], dx.shape[1]), dtype=np.float32)
    for (ox, oy), s, asp, ang, b in zip(offsets, size, aspect, orient, brightness, strict=True):
        # Elliptic Gaussian speck of area ~ π s² (semi-axes s*sqrt(asp), s/sqrt(asp)); σ >= 0.45 px so that
        # sub-pixel specks still light up a pixel instead of falling between pixel centres.
        sa = max(s * np.sqrt(asp) / 1.2, 0.45)
        sb = max(s / np.sqrt(asp) / 1.2, 0.45)
        ex, ey = dx - ox, dy - oy
        u = ex * np.cos(ang) + ey * np.sin(ang)
        v = -ex * np.sin(ang) + ey * np.cos(ang)
        speck = b * np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2))
        np.maximum(value, speck.astype(np.float32), out=value)
    image[rows, cols] += np.float32(contrast) * value

    # ROI: a disc around the specks, as CBIS-DDSM / MIAS annotate a cluster rather than each speck.
    cy = center[0] + float(offsets[:, 1].mean())
    cx = center[1] + float(offsets[:, 0].mean())
    dist = np.hypot(center[1] + offsets[:, 0] - cx, center[0] + offsets[:, 1] - cy)
    roi_radius = float((dist + 2.0 * size).max()) + 1.0
    rr = np.arange(image.shape[0], dtype=np.float32)[:, None] - cy
    cc = np.arange(image.shape[1], dtype=np.float32)[None, :] - cx
    mask = np.zeros(image.shape, dtype=bool)
    r0, r1 = max(int(cy - roi_radius - 1), 0), min(int(cy + roi_radius + 2), image.shape[0])
    c0, c1 = max(int(cx - roi_radius - 1), 0), min(int(cx + roi_radius + 2), image.shape[1])
    mask[r0:r1, c0:c1] = rr[r0:r1] ** 2 + cc[:, c0:c1] ** 2 <= roi_radius**2
    if not mask.any():
        mask[int(np.clip(round(cy), 0, image.shape[0] - 1)), int(np.clip(round(cx), 0, image.shape[1] - 1))] = True
    poly_theta = np.linspace(0.0, 2.0 * np.pi, 32, endpoint=False)
    polygon = np.stack([cx + roi_radius * np.cos(poly_theta), cy + roi_radius * np.sin(poly_theta)], axis=1)
    specks = np.stack([center[1] + offsets[:, 0], center[0] + offsets[:, 1]], axis=1)
    return RenderedLesion(spec=spec, mask=mask, center=(cy, cx), radius=roi_radius, polygon=polygon, specks=specks)


def draw_lesion(image: np.ndarray, spec: LesionSpec, center: tuple[float, float], radius: float) -> RenderedLesion:
    """Draw `spec` (mass or calcification cluster) into `image` in place and return its geometry."""
    if spec.kind == "mass":
        return draw_mass(image, spec, center, radius)
    if spec.kind == "calcification":
        return draw_calcifications(image, spec, center, radius)
    raise ValueError(f"unknown lesion kind {spec.kind!r}; expected 'mass' or 'calcification'")
