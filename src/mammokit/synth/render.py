"""Render one view of a woman's breast: silhouette, skin line, fibroglandular texture, pectoral muscle, lesions.

Images are float32 in [0, 1], MONOCHROME2 (dense tissue bright), drawn in the canonical orientation (chest
wall on the left) and mirrored for right breasts, as in the real data. All geometry is given as fractions of
the image size, so one woman renders alike at any resolution. Cost: two inverse real FFTs (power-law
textures), a few dozen element-wise passes over the columns the breast can reach, and small windows
around the lesions.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import fft

from mammokit.synth.lesions import draw_lesion
from mammokit.synth.model import VIEWS, LesionSpec, RenderedLesion, RenderedView, Woman

_SIDE_CODE = {"L": 0, "R": 1}
_VIEW_CODE = {"CC": 0, "MLO": 1}

BACKGROUND = 0.03  # film/detector background level outside the breast
# Glandular threshold per ACR density class (in units of the texture's std): more dense tissue for higher ACR.
_DENSITY_BIAS = {1: -1.25, 2: -0.45, 3: 0.25, 4: 0.95}


# 2 textures x <= 4 breast-column spans per image size (memory: 8 x H x W/2 float32, 16 MB at 1152 x 896)
@functools.lru_cache(maxsize=8)
def _spectrum_amplitude(shape: tuple[int, int], beta: float, f_min: float) -> np.ndarray:
    h, w = shape
    fy = fft.fftfreq(h).astype(np.float32)[:, None] * h
    fx = fft.rfftfreq(w).astype(np.float32)[None, :] * h
    amp = np.maximum(np.sqrt(fy * fy + fx * fx), np.float32(f_min)) ** np.float32(-beta / 2.0)
    amp[0, 0] = 0.0  # zero mean
    return amp.astype(np.float32)


def power_law_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float, f_min: float = 2.0) -> np.ndarray:
    """Zero-mean, unit-std noise with power spectrum ∝ 1/f^beta (float32, `shape`).

    Frequencies are measured in cycles per image height, so the texture looks the same at every image size;
    `f_min` caps the power of the lowest frequencies (otherwise one blob would fill the image). The Fourier
    coefficients are uniform rather than Gaussian (half the cost); every output pixel sums ~10^5 of them, so
    the field is Gaussian all the same (central limit theorem).
    """
    amp = _spectrum_amplitude(shape, float(beta), float(f_min))
    spec = np.empty(amp.shape, dtype=np.complex64)
    spec.real = rng.random(amp.shape, dtype=np.float32) - np.float32(0.5)
    spec.imag = rng.random(amp.shape, dtype=np.float32) - np.float32(0.5)
    spec *= amp
    field = fft.irfft2(spec, s=shape, workers=1).astype(np.float32, copy=False)
    std = field.std()
    return field / std if std > 0 else field


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class _Geometry:
    """Breast silhouette of one view in canonical orientation, in pixel units.

    `rho` is a normalised radius (0 at the chest-wall centre, 1 on the skin) used both for the mask and for
    the thickness fall-off towards the skin line.
    """

    def __init__(self, woman: Woman, view: str, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.depth_px = woman.depth * width * (1.04 if view == "MLO" else 1.0)
        if view == "CC":
            self.center_row = 0.5 * height
            self.half_top = self.half_bottom = woman.half_height * height
            self.top_exponent = 2.0
        else:
            # MLO: the breast hangs lower and reaches up to the axilla along the pectoral muscle.
            self.center_row = 0.57 * height
            self.half_top = self.center_row * 1.07
            self.half_bottom = min(woman.half_height * height * 1.05, height - self.center_row - 0.02 * height)
            self.top_exponent = 2.6
        self.view = view
        self.pectoral = (woman.pectoral_width * width, woman.pectoral_height * height) if view == "MLO" else None

    def rho(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        x = cols / np.float32(self.depth_px)
        dy = rows - np.float32(self.center_row)
        top = np.abs(dy / np.float32(self.half_top)) ** np.float32(self.top_exponent)
        bottom = (dy / np.float32(self.half_bottom)) ** 2
        y_term = np.where(dy < 0, top, bottom)
        return np.sqrt(x * x + y_term)

    def place(self, lesion: LesionSpec, radius: float) -> tuple[float, float]:
        """(row, col) of a lesion's centre on this view (canonical orientation)."""
        col = lesion.depth * self.depth_px
        spread = np.sqrt(max(1.0 - lesion.depth**2, 0.1)) * 0.8
        if self.view == "CC":
            row = self.center_row + lesion.u * self.half_top * spread
        else:
            half = self.half_top if lesion.w < 0 else self.half_bottom
            row = self.center_row + lesion.w * half * spread * (0.8 if lesion.w < 0 else 1.0)
            pw, ph = self.pectoral  # keep the lesion clear of the pectoral muscle
            if row < ph:
                col = max(col, pw * (1.0 - row / ph) + 1.5 * radius)
        # Pull the centre inside the breast if the silhouette is too small there.
        for _ in range(20):
            if float(self.rho(np.float32(row), np.float32(col))) <= 0.8:
                break
            col -= 0.05 * self.depth_px
            row += (self.center_row - row) * 0.15
        return float(row), float(max(col, 2.0 * radius))


def render_view(woman: Woman, side: str, view: str, *, height: int, width: int) -> RenderedView:
    """Render one view (side "L"/"R", view "CC"/"MLO") of `woman` at `height` x `width` pixels."""
    if side not in _SIDE_CODE or view not in _VIEW_CODE:
        raise ValueError(f"side must be L or R and view CC or MLO, got side={side!r} view={view!r}")
    if height < 32 or width < 32:
        raise ValueError(f"image size must be at least 32 x 32 pixels, got {height} x {width}")
    rng = np.random.default_rng([woman.texture_seed, _SIDE_CODE[side], _VIEW_CODE[view]])
    geo = _Geometry(woman, view, height, width)
    # Everything but the grain is computed on the columns the breast can reach (the boundary wobble is < 5 %).
    step = max(width // 8, 1)
    span = min(width, int(np.ceil(geo.depth_px * 1.12 / step)) * step)
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(span, dtype=np.float32)[None, :]
    rho = geo.rho(rows, cols)

    # Silhouette with a gently wavy skin line: separable low-frequency wobble of the boundary radius
    # (1-D terms, far cheaper than an angular modulation over the whole image).
    phase = rng.uniform(0.0, 2.0 * np.pi, size=3)
    wobble_rows = 0.012 * np.cos(2.0 * np.pi * 1.5 * rows / height + phase[0]) + 0.006 * np.cos(
        2.0 * np.pi * 3.0 * rows / height + phase[1]
    )
    wobble_cols = 0.008 * np.cos(2.0 * np.pi * 2.0 * cols / width + phase[2])
    r = rho / (np.float32(1.0) + wobble_rows.astype(np.float32) + wobble_cols.astype(np.float32))
    edge_px = (1.0 - r) * np.float32(geo.depth_px)  # ≈ distance to the skin in px
    alpha = np.clip(edge_px + 0.5, 0.0, 1.0)  # anti-aliased silhouette
    mask = r < 1.0

    # Fibroglandular tissue: soft-thresholded 1/f^3 texture, concentrated away from the skin and the chest wall;
    # the threshold (ACR density class + a per-woman offset) sets how much of the breast is dense.
    fft_shape = (height, fft.next_fast_len(span, real=True))
    coarse = power_law_noise(rng, fft_shape, beta=3.0)[:, :span]
    fine = power_law_noise(rng, fft_shape, beta=2.0, f_min=8.0)[:, :span]
    chest = 0.5 * np.exp(-cols / np.float32(0.12 * geo.depth_px))
    r2 = np.minimum(r, np.float32(1.0)) ** 2
    bias = np.float32(_DENSITY_BIAS[woman.density] + woman.density_offset + 1.2 - 0.6)
    glandular = _sigmoid((coarse + 0.25 * fine - 1.92 * r2 - 1.2 * chest + bias) / np.float32(0.45))
    thickness = np.sqrt(np.sqrt(np.maximum(1.0 - r2, 0.0)))  # compressed-breast thickness falls off at the skin
    tissue = thickness * (0.30 + 0.26 * glandular + 0.03 * fine)
    skin_px = np.float32(max(0.004 * height, 0.8))
    skin = 0.12 * np.exp(-((edge_px / skin_px) ** 2))
    sub = np.float32(BACKGROUND) + alpha * (tissue + skin)

    if geo.pectoral is not None:
        # Pectoral muscle: a bright triangle in the upper chest-wall corner with a slightly curved front,
        # computed on its bounding box only (a few percent of the image).
        pw, ph = geo.pectoral
        box_r, box_c = min(int(np.ceil(ph)) + 2, height), min(int(np.ceil(pw)) + 2, span)
        rr, cc = rows[:box_r], cols[:, :box_c]
        front = cc / np.float32(pw) + (rr / np.float32(ph)) ** 1.15
        pect_alpha = np.clip((1.0 - front) * np.float32(min(pw, ph) / 2.0), 0.0, 1.0)
        level = 0.64 + 0.04 * fine[:box_r, :box_c] + 0.06 * (rr / np.float32(ph))
        box = sub[:box_r, :box_c]
        box += pect_alpha * (level - box)
        mask[:box_r, :box_c] |= pect_alpha > 0.5

    image = np.full((height, width), BACKGROUND, dtype=np.float32)
    image[:, :span] = sub
    breast_mask = np.zeros((height, width), dtype=bool)
    breast_mask[:, :span] = mask
    lesions: list[RenderedLesion] = []
    for spec in woman.breast(side).lesions:
        radius = spec.size * woman.depth * width
        center = geo.place(spec, radius)
        lesions.append(draw_lesion(image, spec, center, radius))

    # Detector / film grain: uniform noise of std 0.006 (cheaper than Gaussian, indistinguishable here).
    grain = rng.random((height, width), dtype=np.float32)
    grain -= np.float32(0.5)
    image += np.float32(0.006 * np.sqrt(12.0)) * grain
    np.clip(image, 0.0, 1.0, out=image)
    if side == "R":  # right breasts: chest wall on the right, as in the real data
        image = image[:, ::-1].copy()
        breast_mask = breast_mask[:, ::-1].copy()
        for lesion in lesions:
            _mirror(lesion, width)
    return RenderedView(woman=woman, side=side, view=view, image=image, breast_mask=breast_mask, lesions=lesions)


def _mirror(lesion: RenderedLesion, width: int) -> None:
    lesion.mask = lesion.mask[:, ::-1].copy()
    lesion.center = (lesion.center[0], width - 1 - lesion.center[1])
    lesion.polygon = np.stack([width - 1 - lesion.polygon[:, 0], lesion.polygon[:, 1]], axis=1)[::-1].copy()
    if lesion.specks.size:
        lesion.specks = np.stack([width - 1 - lesion.specks[:, 0], lesion.specks[:, 1]], axis=1)


def render_woman(
    woman: Woman, *, height: int, width: int, sides: tuple[str, ...] = ("L", "R"), views: tuple[str, ...] = VIEWS
) -> list[RenderedView]:
    """Render the views of `woman` in the order (L CC, L MLO, R CC, R MLO) (restricted to `sides` x `views`)."""
    return [render_view(woman, s, v, height=height, width=width) for s in sides for v in views]
