"""Render heatmaps over the mammogram so that a person can read them, and save the raw maps.

The base is the grey image (windowed to its own 0.5..99.5 % intensity range of non-zero pixels); the
heatmap is blended in with a perceptual colour map (inferno by default) and an opacity proportional
to the heat, so cold regions show the plain mammogram and a reader sees the anatomy under every hot
spot. Pixels whose heat is NaN (no value) stay grey.

`render_panel` builds the figure a reader looks at: a caption (what the map is, the prediction and
the threshold), the image and the overlay side by side, and a colour bar with the value scale;
lesion outlines are drawn on both halves when known. `write_raw_map` saves the float map itself
(.npy) for users who compute their own metrics.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mammokit.explain.names import CAM_LABELS, PATCH_MALIGNANT
from mammokit.utils.atomic import atomic_path

DEFAULT_CMAP = "inferno"
CONTOUR_RGB = (0, 255, 255)  # cyan: not in inferno's black-red-yellow range, so it stays visible on the heat


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
    alpha: float = 0.7,
    cmap: str = DEFAULT_CMAP,
    vmin: float = 0.0,
    vmax: float = 1.0,
    max_side: int | None = None,
) -> np.ndarray:
    """Blend `heat` over `pixels`.

    Args:
        pixels: (H, W) image (any numeric dtype, MONOCHROME2).
        heat: (H, W) heatmap on the same grid; NaN = no value.
        alpha: opacity at `vmax`; opacity scales linearly from 0 at `vmin`.
        cmap: a Matplotlib colour map name.
        vmin, vmax: heat values mapped to the ends of the colour map (probabilities: 0 and 1).
        max_side: if given, downscale (keeping the aspect ratio) so the longer side is at most this.

    Returns:
        (H', W', 3) uint8 RGB.
    """
    grey, index = _grey_and_index(pixels, heat, vmin, vmax, max_side)
    return np.asarray(_blend(grey, index, alpha, cmap))


def _grey_and_index(
    pixels: np.ndarray, heat: np.ndarray, vmin: float, vmax: float, max_side: int | None
) -> tuple[Image.Image, Image.Image]:
    """The windowed grey image and the heat as 0..255 colour-map indices, both downscaled to `max_side`."""
    if pixels.shape != heat.shape:
        raise ValueError(f"heatmap shape {heat.shape} differs from image shape {pixels.shape}")
    if not vmax > vmin:
        raise ValueError(f"colour scale needs vmax > vmin, got vmin={vmin}, vmax={vmax}")
    grey = Image.fromarray(window_to_u8(pixels))
    level = (np.asarray(heat, dtype=np.float32) - np.float32(vmin)) * np.float32(255.0 / (vmax - vmin))
    np.clip(np.nan_to_num(level, nan=0.0, copy=False), 0.0, 255.0, out=level)  # NaN (no value) -> no heat
    index = Image.fromarray((level + 0.5).astype(np.uint8))
    size = _scaled_size(pixels.shape, max_side)
    if size != grey.size:
        grey = grey.resize(size, Image.Resampling.BOX)
        index = index.resize(size, Image.Resampling.BOX)
    return grey, index


def _scaled_size(shape: tuple[int, ...], max_side: int | None) -> tuple[int, int]:
    """(width, height) after downscaling so that the longer side is at most `max_side`."""
    h, w = int(shape[0]), int(shape[1])
    if not max_side or max(h, w) <= max_side:
        return w, h
    scale = max_side / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _lut(cmap: str) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)  # (256, 3)


def _blend(grey: Image.Image, index: Image.Image, alpha: float, cmap: str) -> Image.Image:
    # Pillow does the per-pixel work in C: the colour map as a palette, the heat-proportional opacity
    # as a lookup table, and the blend as a masked composite (a 4560x2864 film in well under a second)
    colour = index.copy()
    colour.putpalette(_lut(cmap).tobytes())
    opacity = index.point([round(alpha * v) for v in range(256)])
    return Image.composite(colour.convert("RGB"), grey.convert("RGB"), opacity)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (shipped with Matplotlib, so always present) at `size` px."""
    from matplotlib import font_manager

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except OSError:  # a Pillow without FreeType: the small built-in bitmap font
        return ImageFont.load_default()


def _outline(mask: np.ndarray, size: tuple[int, int], width: int) -> np.ndarray:
    """Boolean (h, w) outline `width` px thick of `mask` resized to `size` = (w, h)."""
    from scipy import ndimage

    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)) >= 128
    edge = small & ~ndimage.binary_erosion(small, iterations=1, border_value=0)
    return ndimage.binary_dilation(edge, iterations=max(0, width - 1)) if width > 1 else edge


def _colour_bar(height: int, cmap: str, vmin: float, vmax: float, label: str, font_size: int) -> Image.Image:
    """A vertical colour bar (vmax on top) with 5 tick labels and a rotated axis label."""
    bar_w = max(12, font_size)
    font = _font(font_size)
    ticks = np.linspace(vmin, vmax, 5)
    texts = [f"{v:.2f}" for v in ticks]
    text_w = max(int(font.getlength(t)) for t in texts) if hasattr(font, "getlength") else 6 * font_size
    pad = max(4, font_size // 2)
    canvas = Image.new("RGB", (pad + bar_w + pad + text_w + pad + font_size + 2 * pad, height), "white")
    top, bottom = pad + font_size // 2, height - pad - font_size // 2
    gradient = np.linspace(255, 0, max(2, bottom - top)).astype(np.uint8)  # vmax at the top
    column = Image.fromarray(np.repeat(gradient[:, None], bar_w, axis=1))
    column.putpalette(_lut(cmap).tobytes())
    canvas.paste(column.convert("RGB"), (pad, top))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((pad, top, pad + bar_w, bottom), outline="black")
    for value, text in zip(ticks, texts, strict=True):
        y = bottom - (value - vmin) / (vmax - vmin) * (bottom - top)
        draw.line((pad + bar_w, y, pad + bar_w + pad // 2, y), fill="black")
        draw.text((pad + bar_w + pad, y), text, fill="black", font=font, anchor="lm")
    axis = Image.new("RGB", (max(1, bottom - top), font_size + pad), "white")
    ImageDraw.Draw(axis).text((axis.width // 2, axis.height // 2), label, fill="black", font=font, anchor="mm")
    canvas.paste(axis.rotate(90, expand=True), (pad + bar_w + pad + text_w + pad, top))
    return canvas


def render_panel(
    pixels: np.ndarray,
    heat: np.ndarray,
    *,
    caption: Sequence[str] = (),
    scale_label: str = "value",
    lesion_mask: np.ndarray | None = None,
    alpha: float = 0.7,
    cmap: str = DEFAULT_CMAP,
    vmin: float = 0.0,
    vmax: float = 1.0,
    max_side: int | None = None,
) -> Image.Image:
    """The readable figure: caption lines on top, then [image | overlay | colour bar].

    Args:
        pixels, heat, alpha, cmap, vmin, vmax, max_side: as `render_overlay` (max_side applies to each half).
        caption: lines of text above the images, e.g. the map kind, p(malignant) and the threshold.
        scale_label: the colour bar's axis label (what the values mean).
        lesion_mask: optional (H, W) boolean lesion mask on the image grid; its outline is drawn in cyan
            on both halves.

    Returns:
        an RGB Pillow image.
    """
    grey, index = _grey_and_index(pixels, heat, vmin, vmax, max_side)
    overlay = _blend(grey, index, alpha, cmap)
    plain = grey.convert("RGB")
    w, h = grey.size
    font_size = max(11, round(h / 28))  # text readable at any image size: ~1/28 of the image height
    gap = max(4, font_size // 2)
    if lesion_mask is not None and lesion_mask.any():
        if lesion_mask.shape != pixels.shape:
            raise ValueError(f"lesion mask shape {lesion_mask.shape} differs from image shape {pixels.shape}")
        edge = _outline(lesion_mask, (w, h), max(1, round(h / 250)))
        for im in (plain, overlay):
            arr = np.asarray(im).copy()
            arr[edge] = CONTOUR_RGB
            im.paste(Image.fromarray(arr))
    bar = _colour_bar(h, cmap, vmin, vmax, scale_label, font_size)
    font = _font(font_size)
    line_h = round(font_size * 1.35)
    width = gap + w + gap + w + bar.width
    lines = [part for line in caption for part in _wrap(line, font, width - 2 * gap)]
    head = gap + line_h * len(lines)
    canvas = Image.new("RGB", (width, head + h + gap), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((gap, gap + i * line_h), line, fill="black", font=font)
    canvas.paste(plain, (gap, head))
    canvas.paste(overlay, (gap + w + gap, head))
    canvas.paste(bar, (gap + 2 * w + gap, head))
    return canvas


def _wrap(text: str, font: Any, max_px: int) -> list[str]:
    """Split a caption line at spaces so that no piece is wider than `max_px` (narrow images: no clipped text)."""
    out: list[str] = []
    for word in text.split(" "):
        if out and font.getlength(out[-1] + " " + word) <= max_px:
            out[-1] += " " + word
        else:
            out.append(word)
    return out or [""]


def write_panel(path: str | Path, pixels: np.ndarray, heat: np.ndarray, **kwargs: Any) -> None:
    """Render a panel (see `render_panel`) and write it as an RGB PNG atomically."""
    image = render_panel(pixels, heat, **kwargs)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=1)


def panel_png(pixels: np.ndarray, heat: np.ndarray, **kwargs: Any) -> bytes:
    """PNG bytes of a panel (for embedding in a report)."""
    import io

    buf = io.BytesIO()
    render_panel(pixels, heat, **kwargs).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_overlay(
    path: str | Path,
    pixels: np.ndarray,
    heat: np.ndarray,
    *,
    alpha: float = 0.7,
    cmap: str = DEFAULT_CMAP,
    vmin: float = 0.0,
    vmax: float = 1.0,
    max_side: int | None = None,
) -> None:
    """Render the bare overlay (see `render_overlay`) and write an RGB PNG atomically."""
    grey, index = _grey_and_index(pixels, heat, vmin, vmax, max_side)
    with atomic_path(path) as tmp:
        _blend(grey, index, alpha, cmap).save(tmp, format="PNG", compress_level=1)


def write_raw_map(path: str | Path, heat: np.ndarray) -> None:
    """Save a float32 (H, W) map as .npy atomically (NumPy's own format: shape and dtype in the header)."""
    buf = io.BytesIO()  # not np.save(file): its short write on a full disk raises OSError without an errno
    np.save(buf, np.asarray(heat, dtype=np.float32), allow_pickle=False)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())  # ENOSPC is then an OSError(28) that `utils.diskfull` recognises


def describe_map(
    kind: str, *, layer: str | None = None, method: str | None = None, stride: int | None = None, flips: bool = False
) -> str:
    """One caption line saying what a heatmap kind ("gradcam", "patch_malignant", "patch_<class>") shows."""
    if kind == "gradcam":
        name = CAM_LABELS.get(method or "", CAM_LABELS["gradcam"])
        where = f" at {layer}" if layer else ""
        mean = ", mean over the 4 flips" if flips else ""
        return f"{name}{where} of p(malignant){mean}, scaled to this image's maximum"
    step = f", {stride}-px stride" if stride else ""
    if kind == PATCH_MALIGNANT:
        return f"patch classifier: p(malignant patch) summed over the malignant classes{step}"
    return f"patch classifier: p({kind.removeprefix('patch_')}){step}"


def scale_label(kind: str) -> str:
    """The colour bar's axis label for a heatmap kind."""
    return "relative activation (per image)" if kind == "gradcam" else "patch probability"


def prediction_line(prob: float, threshold: float, call: int, label: int | None = None) -> str:
    """'p(malignant) 0.873 >= threshold 0.412: malignant call' (+ the true label when known)."""
    sign = ">=" if call else "<"
    text = f"p(malignant) {prob:.3f} {sign} threshold {threshold:.3f}: {'malignant' if call else 'not malignant'} call"
    if label is not None:
        text += f" | truth: {'malignant' if int(label) == 1 else 'not malignant'}"
    return text
