"""Receptive-field placement: where a conv feature map's cells look, and resampling cell maps onto pixels.

Shared by the patch probability maps (`scoring.patch_maps`) and the class activation maps (`explain.cam`): both
compute a map per feature cell, and both must put each cell at the centre of its receptive field rather than at the
naive `stride * i` (a padded trunk looks stride / 2 - 1/2 px further up and left; docs/prediction.md).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

# Cell maps -> pixels: bilinear for patch probabilities (stay in [0, 1], zero far from any hot window); the CAMs
# use cubic (`explain.cam.CAM_INTERPOLATION_ORDER`).
MAP_INTERPOLATION_ORDER = 1


def cell_map_to_pixels(
    cell_map: np.ndarray,
    out_hw: tuple[int, int],
    stride: tuple[float, float],
    window: tuple[float, float],
    origin: tuple[float, float] | None = None,
    order: int = MAP_INTERPOLATION_ORDER,
) -> np.ndarray:
    """Resample a pooled feature-cell map onto the pixel grid of the image it was computed on.

    Args:
        cell_map: (..., h, w) values per pooled window; window (i, j) covers cells
            i .. i + window[0] - 1 (rows) and j .. j + window[1] - 1 (columns).
        out_hw: (H, W) of the image the trunk saw.
        stride: cell pitch in pixels (rows, columns), e.g. (32, 32).
        window: pooling window in cells (rows, columns).
        origin: where cell (0, 0) looks, in pixels (rows, columns; pixel y spans [y, y + 1)): the
            centre of its receptive field (`receptive_field_origin`). None = stride / 2, i.e. cell i
            covers pixels [stride * i, stride * (i + 1)), which holds for unpadded pooling only: a
            padded conv trunk looks stride / 2 - 1/2 pixels further up and left (15.5 px at stride 32).

    Returns:
        (..., H, W) float32, bilinear between window centres, constant beyond the outermost centres.
    """
    from scipy.ndimage import map_coordinates

    h_out, w_out = out_hw
    oy, ox = (stride[0] / 2.0, stride[1] / 2.0) if origin is None else origin
    # window i is centred at pixel origin + stride * (i + (window - 1) / 2); pixel y has its centre at y + 0.5
    rows = (np.arange(h_out) + 0.5 - oy) / stride[0] - (window[0] - 1) / 2.0
    cols = (np.arange(w_out) + 0.5 - ox) / stride[1] - (window[1] - 1) / 2.0
    lead = cell_map.shape[:-2]
    flat = cell_map.reshape(-1, *cell_map.shape[-2:]).astype(np.float32, copy=False)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    out = np.stack([map_coordinates(m, [rr, cc], order=order, mode="nearest") for m in flat])
    return out.reshape(*lead, h_out, w_out).astype(np.float32, copy=False)


def nominal_stride(size: int, cells: int) -> float:
    """The trunk's output stride: the power of two nearest size / cells (344 px -> 11 cells is stride 32, not 31.3)."""
    return float(2 ** round(math.log2(size / cells)))


@contextlib.contextmanager
def forward_hooks(modules: Iterable[nn.Module], hook: Callable[..., None]) -> Iterator[None]:
    """`hook` on the forward pass of every module of `modules` while the block runs; removed afterwards."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _StopForward(Exception):
    """Raised by a forward hook once the probed layer has produced its output (the rest need not run)."""


# module -> {(layer name, channels): origin}; weak, so a released model takes its entry with it
_ORIGINS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, int], tuple[float, float]]] = weakref.WeakKeyDictionary()


def receptive_field_origin(
    model: nn.Module, layer: nn.Module | None = None, *, in_channels: int = 1, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """Where cell (0, 0) of a feature map looks: the centre of its receptive field, in input pixels.

    The naive reading of a stride-s map, cell i = pixels [s i, s (i + 1)), is wrong for padded conv
    trunks: with symmetric padding every stride-2 layer centres output j on input 2 j, so a stride-16
    cell i looks at pixel 16 i (centre 16 i + 0.5), 7.5 px up-left of the naive centre 16 i + 8 (15.5 px
    at stride 32); "same" padding (TF ports) shifts it the other way. Measured rather than derived per
    architecture: a copy of the network gets uniform positive weights (every conv/linear weight 1 /
    fan-in, no bias, batch norms as identity), so with a small constant positive input every activation
    is in its linear range and the gradient of one central cell with respect to the input is the
    geometry alone (which pixels reach the cell, and by how many paths), symmetric about the cell's
    centre. Its centroid minus the cell index times the stride is cell (0, 0)'s centre. (The trained
    weights are left out on purpose: the centroid of a trained network's gradient on random input moves
    by several pixels from one draw to the next.) Cached per model and layer.

    Args:
        model: the network; its output (or `layer`'s) must be a (B, C, h, w) map of the (B, in_channels, H, W) input.
        layer: a module inside `model` whose output is the map (None: the model's output).
        in_channels: input channels.
        device: where the model lives.

    Returns:
        (row, column) in pixels, pixel y spanning [y, y + 1).
    """
    import torch

    name = "" if layer is None else next(n for n, m in model.named_modules() if m is layer)
    key = (name, in_channels)
    cached = _ORIGINS.setdefault(model, {})
    if key in cached:
        return cached[key]
    probe = _geometry_copy(model).to(device)
    target = probe.get_submodule(name) if layer is not None else None
    captured: dict[str, torch.Tensor] = {}

    def grab(_mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
        captured["map"] = out
        raise _StopForward

    def feature_map(x: torch.Tensor) -> torch.Tensor:
        if target is None:
            return probe(x)
        with forward_hooks([target], grab), contextlib.suppress(_StopForward):
            probe(x)
        return captured.pop("map")

    size = 256  # grown until the map has >= 12 cells a side, so the central cell's field is not cut off
    while True:
        # small and positive: no ReLU6 saturates after dozens of residual additions
        x = torch.full((1, in_channels, size, size), 1e-6, device=device, requires_grad=True)
        with torch.inference_mode(False), torch.enable_grad():
            fmap = feature_map(x)
            h, w = fmap.shape[-2:]
            if min(h, w) >= 12 or size >= 1024:
                i, j = h // 2, w // 2
                (grad,) = torch.autograd.grad(fmap[..., i, j].sum(), x)
                break
        size = min(1024, -(-12 * size // max(1, min(h, w))))
    weight = grad.detach().abs().sum(dim=(0, 1)).double().cpu().numpy()  # (size, size)
    total = weight.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"{type(model).__name__}: the feature map does not depend on the input; no receptive field")
    centres = np.arange(size) + 0.5
    row = float((weight.sum(axis=1) * centres).sum() / total) - i * size / h
    col = float((weight.sum(axis=0) * centres).sum() / total) - j * size / w
    cached[key] = (row, col)
    return row, col


def _geometry_copy(model: nn.Module) -> nn.Module:
    """A float32 copy of `model` with uniform positive weights and identity batch norms (see above)."""
    import copy

    import torch

    probe = copy.deepcopy(model).float().eval()
    with torch.no_grad():
        for m in probe.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()  # mean 0, var 1
                if m.affine:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
            elif isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
                m.weight.fill_(1.0 / max(1, m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.zero_()
    return probe
