"""Heatmaps in the prepared-image geometry: patch-classifier probability maps and Grad-CAM.

Two kinds, both returned as float32 maps on the *prepared* pixel grid (the predictor maps them back
onto the original mammogram with `Geometry.to_original`):

* **patch** (Shen et al. 2019, seed spec section 7.5, "fprop" mode): the patch classifier's trunk is run
  fully convolutionally over the whole prepared image; its feature map (stride s, usually 32) is
  average-pooled over windows the size of one training patch (patch_size / s cells, stride 1), and
  the patch head is applied at every window position. Because the head starts with global average
  pooling, a pooled window fed to the head is exactly the classifier's output for a patch whose
  receptive field is that window, so cell (i, j) is p(class | patch at rows s*i .. s*i + patch_h).
  Softmax over classes gives one probability map per patch class (values in [0, 1], comparable
  across images).
* **gradcam**: Grad-CAM (pytorch-grad-cam) of the whole-image model's last spatial feature map,
  targeting log p(malignant) = logsumexp(logits[positive]) - logsumexp(logits) (the log keeps the
  gradient alive when the softmax saturates). Min-max normalised per image by the library, so it
  shows *where*, not *how much*.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn


def cell_map_to_pixels(
    cell_map: np.ndarray, out_hw: tuple[int, int], stride: tuple[float, float], window: tuple[int, int]
) -> np.ndarray:
    """Resample a pooled feature-cell map onto the pixel grid of the image it was computed on.

    Args:
        cell_map: (..., h, w) values per pooled window; window (i, j) covers trunk cells
            i .. i + window[0] - 1 (rows) and j .. j + window[1] - 1 (columns).
        out_hw: (H, W) of the image the trunk saw.
        stride: trunk output stride in pixels (rows, columns), e.g. (32, 32).
        window: pooling window in cells (rows, columns).

    Returns:
        (..., H, W) float32, bilinear between window centres, constant beyond the outermost centres.
    """
    from scipy.ndimage import map_coordinates

    h_out, w_out = out_hw
    # window i is centred at pixel stride * (i + window / 2); pixel y has its centre at y + 0.5
    rows = (np.arange(h_out) + 0.5) / stride[0] - window[0] / 2.0
    cols = (np.arange(w_out) + 0.5) / stride[1] - window[1] / 2.0
    lead = cell_map.shape[:-2]
    flat = cell_map.reshape(-1, *cell_map.shape[-2:]).astype(np.float32, copy=False)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    out = np.stack([map_coordinates(m, [rr, cc], order=1, mode="nearest") for m in flat])
    return out.reshape(*lead, h_out, w_out).astype(np.float32, copy=False)


def patch_probability_maps(patch_model: nn.Module, x: torch.Tensor, patch_hw: tuple[int, int]) -> np.ndarray:
    """Patch-classifier probability maps over whole images.

    Args:
        patch_model: a `patch_classifier` with `.trunk` ((B, 1, H, W) -> (B, C, h, w)) and `.head`
            (global average pool -> dropout -> linear); in eval mode.
        x: (B, 1, H, W) normalised prepared images, on the model's device.
        patch_hw: the (height, width) of the patches the classifier was trained on, in pixels of
            the same prepared geometry.

    Returns:
        (B, n_classes, H, W) float32 probabilities (softmax over classes at every pixel).
    """
    import torch

    from mammokit.infer.core import class_probabilities

    with torch.inference_mode():
        feats = patch_model.trunk(x)  # (B, C, h, w), h = H / stride
        b, c, h, w = feats.shape
        stride = (x.shape[-2] / h, x.shape[-1] / w)
        window = (max(1, min(h, round(patch_hw[0] / stride[0]))), max(1, min(w, round(patch_hw[1] / stride[1]))))
        pooled = torch.nn.functional.avg_pool2d(feats, window, stride=1)  # (B, C, h', w')
        hp, wp = pooled.shape[-2:]
        # every window position as a 1x1 "patch feature map": the head's GAP is then the identity,
        # so the head (whatever its exact layers) gives the patch classifier's logits there
        cells = pooled.permute(0, 2, 3, 1).reshape(b * hp * wp, c, 1, 1)
        logits = patch_model.head(cells)  # (B*h'*w', n_classes)
        probs = class_probabilities(logits).reshape(b, hp, wp, -1).permute(0, 3, 1, 2)  # (B, n_classes, h', w')
    return cell_map_to_pixels(probs.cpu().numpy(), (x.shape[-2], x.shape[-1]), stride, window)


class _LogProbTarget:
    """Grad-CAM target: log of the summed softmax over the positive output units of one image."""

    def __init__(self, positive: Sequence[int]) -> None:
        self.positive = list(positive)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.logsumexp(logits[..., self.positive], dim=-1) - torch.logsumexp(logits, dim=-1)


def last_spatial_module(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Grad-CAM's target layer: the last direct child of `model` that outputs a feature map larger than 1x1.

    For a `whole_image` model this is `.top` (the last convolutional block before global pooling),
    or `.trunk` when the top is absent or has pooled the map down to a single cell (small inputs),
    where Grad-CAM would carry no spatial information. Found by running `example` once, because the
    order in which submodules are registered need not be the order in which they run.
    """
    import torch

    seen: list[tuple[nn.Module, tuple[int, ...]]] = []

    def record(mod: nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            seen.append((mod, tuple(out.shape[-2:])))

    hooks = [child.register_forward_hook(record) for child in model.children()]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
    spatial = [mod for mod, (h, w) in seen if h * w > 1]
    if not spatial:
        raise ValueError(f"{type(model).__name__} has no child module producing a spatial feature map for Grad-CAM")
    return spatial[-1]


class GradCamRunner:
    """Grad-CAM maps of a whole-image model, batch in -> (B, H, W) maps in [0, 1] on the input grid."""

    def __init__(self, model: nn.Module, positive: Sequence[int], example: torch.Tensor) -> None:
        from pytorch_grad_cam import GradCAM

        self.layer = last_spatial_module(model, example)
        # Gradients are needed only from the output back to the target layer. Freezing the modules
        # that run before it (the trunk, when the target is the top) keeps autograd from recording
        # them at all, which roughly halves Grad-CAM's cost. The model is used for inference only.
        for child in model.children():
            if child is self.layer:
                break
            child.requires_grad_(False)
        self.cam = GradCAM(model=model, target_layers=[self.layer])
        self.positive = list(positive)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        import torch

        with torch.enable_grad():
            maps = self.cam(input_tensor=x, targets=[_LogProbTarget(self.positive)] * x.shape[0])
        return np.asarray(maps, dtype=np.float32)  # (B, H, W), already resized to the input size
