"""Patch-classifier probability maps over whole images, in the prepared-image geometry.

The patch maps (Shen et al. 2019, the original code's "fprop" mode; docs/decisions.md, "patch heatmaps"): the
patch classifier's trunk is run fully convolutionally over the whole prepared image; its feature map
(stride s, usually 32) is average-pooled over windows the size of one training patch (patch_size / s
cells, stride 1), and the patch head is applied at every window position. Because the head starts with global average
pooling, a pooled window fed to the head is exactly the classifier's output for a patch whose
receptive field is that window, so cell (i, j) is p(class | patch at rows s*i .. s*i + patch_h).
A finer map stride t = s / k is obtained by "shift and stitch": the trunk also runs on the image
shifted by t, 2t, ... (k x k passes) and the k x k interleaved maps form one map at stride t.
Softmax over classes gives one probability map per patch class (values in [0, 1], comparable
across images); `malignant_map` sums the malignant classes.

Used by prediction's patch heatmaps (`infer.predictor`) and by hard-negative patch mining (`data.patches`), so it
lives below both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mammokit.scoring.receptive_field import cell_map_to_pixels, nominal_stride, receptive_field_origin

if TYPE_CHECKING:
    import torch
    from torch import nn


def patch_probability_maps(
    patch_model: nn.Module, x: torch.Tensor, patch_hw: tuple[int, int], stride: int | None = None
) -> np.ndarray:
    """Patch-classifier probability maps over whole images.

    Args:
        patch_model: a `patch_classifier` with `.trunk` ((B, 1, H, W) -> (B, C, h, w)) and `.head`
            (global average pool -> dropout -> linear); in eval mode.
        x: (B, 1, H, W) normalised prepared images, on the model's device.
        patch_hw: the (height, width) of the patches the classifier was trained on, in pixels of
            the same prepared geometry.
        stride: map stride in pixels; must divide the trunk stride s (32 for the usual trunks).
            None = s (one pass); s / k costs k * k trunk passes (shift and stitch).

    Returns:
        (B, n_classes, H, W) float32 probabilities (softmax over classes at every pixel).
    """
    import torch

    height, width = x.shape[-2:]
    with torch.inference_mode():
        feats = patch_model.trunk(x)  # (B, C, h, w), h = ceil(H / s)
        s = (nominal_stride(height, feats.shape[-2]), nominal_stride(width, feats.shape[-1]))
        k = 1 if stride is None else _shift_factor(s, stride)
        window = (max(1, min(feats.shape[-2], round(patch_hw[0] / s[0]))),
                  max(1, min(feats.shape[-1], round(patch_hw[1] / s[1]))))  # fmt: skip
        t = (s[0] / k, s[1] / k)
        grids: dict[tuple[int, int], torch.Tensor] = {}
        for a in range(k):
            for b in range(k):
                dy, dx = round(a * t[0]), round(b * t[1])
                f = feats if (a, b) == (0, 0) else patch_model.trunk(x[..., dy:, dx:])
                grids[a, b] = _window_probs(patch_model, f, window)  # (B, n, h', w')
        hp = min(g.shape[-2] for g in grids.values())
        wp = min(g.shape[-1] for g in grids.values())
        first = grids[0, 0]
        fine = first.new_empty((first.shape[0], first.shape[1], hp * k, wp * k))
        for (a, b), g in grids.items():  # shifted by (a t, b t): its cell i sits at fine row k i + a
            fine[..., a::k, b::k] = g[..., :hp, :wp]
    # fine cell I = k i + a is trunk cell i of the pass shifted by a t: it looks at origin + s i + a t =
    # origin + t I. As a window of k * window fine cells at stride t, that is origin - (s - t) / 2.
    oy, ox = receptive_field_origin(patch_model.trunk, in_channels=x.shape[1], device=x.device)
    origin = (oy - (s[0] - t[0]) / 2.0, ox - (s[1] - t[1]) / 2.0)
    return cell_map_to_pixels(fine.cpu().numpy(), (height, width), t, (window[0] * k, window[1] * k), origin)


def _shift_factor(trunk_stride: tuple[float, float], stride: int) -> int:
    ratio = trunk_stride[0] / stride
    if stride >= trunk_stride[0]:
        return 1  # the trunk's own stride is the coarsest map there is
    if stride < 1 or abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1 or trunk_stride[0] != trunk_stride[1]:
        raise ValueError(
            f"patch map stride {stride} px must divide the patch trunk's stride {trunk_stride[0]:g} px "
            f"(e.g. {trunk_stride[0]:g}, {trunk_stride[0] / 2:g} or {trunk_stride[0] / 4:g})"
        )
    return round(ratio)


def _window_probs(patch_model: nn.Module, feats: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) trunk features -> (B, n_classes, h', w') softmax of the head at every window."""
    import torch

    from mammokit.scoring.core import class_probabilities

    pooled = torch.nn.functional.avg_pool2d(feats, window, stride=1)  # (B, C, h', w')
    b, c, hp, wp = pooled.shape
    # every window position as a 1x1 "patch feature map": the head's GAP is then the identity,
    # so the head (whatever its exact layers) gives the patch classifier's logits there
    cells = pooled.permute(0, 2, 3, 1).reshape(b * hp * wp, c, 1, 1)
    logits = patch_model.head(cells)  # (B*h'*w', n_classes)
    return class_probabilities(logits).reshape(b, hp, wp, -1).permute(0, 3, 1, 2)


def malignant_classes(classes: Sequence[str]) -> list[int]:
    """Indices of the patch classes that count as malignant (names containing "malignant")."""
    found = [i for i, name in enumerate(classes) if "malignant" in name]
    if not found:
        raise ValueError(f"no malignant class among the patch classes {list(classes)}")
    return found


def malignant_map(maps: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """(..., n_classes, H, W) class probabilities -> (..., H, W) p(any malignant class) = their sum."""
    return maps[..., malignant_classes(classes), :, :].sum(axis=-3).astype(np.float32)
