"""Class activation maps of the whole-image model, in the prepared-image geometry.

Returned as float32 maps on the *prepared* pixel grid (the predictor maps them back onto the original
mammogram with `Geometry.to_original`); each cell is placed where it looks (`scoring.receptive_field`). The
other heatmap kind, the patch classifier's probability maps, is `scoring.patch_maps` (patch mining uses it too).

The CAM (Grad-CAM, Grad-CAM++ or HiResCAM from pytorch-grad-cam) of the whole-image model at one
layer, targeting log p(malignant) = logsumexp(logits[positive]) - logsumexp(logits) (the log keeps
the gradient alive when the softmax saturates). Min-max normalised per image by the library, so it
shows *where*, not *how much*. The layer (`default_cam_layer`): the deepest stage of the trunk at
output stride 16 in timm's own stage list (`feature_info`): ResNet `layer3`, VGG `features.29`
(conv5_3 + ReLU, before the last pool), EfficientNet/MobileNet `blocks.4`, ConvNeXt `stages.2`,
DenseNet `denseblock3`. The top layers of the demo-sized models pool the map down to 2x2, and
even the trunk output (stride 32) is only 8x6 cells on a 256x192 image, too coarse to point at a
lesion (measured in benchmarks/bench_localisation.py, docs/prediction.md).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mammokit.explain.names import CAM_METHODS, DEFAULT_CAM_METHOD
from mammokit.scoring.receptive_field import cell_map_to_pixels, forward_hooks, nominal_stride, receptive_field_origin

if TYPE_CHECKING:
    import torch
    from torch import nn

# CAM method names (explain.names.CAM_METHODS, in its order) -> pytorch-grad-cam class names
CAM_CLASSES: dict[str, str] = dict(zip(CAM_METHODS, ("GradCAM", "GradCAMPlusPlus", "HiResCAM"), strict=True))
AUTO_LAYER = "auto"  # the rule above; any other value names a module of the whole-image model
CAM_STRIDE = 16  # output stride of the stage the rule picks
# Cell maps -> pixels: cubic for CAMs, whose maximum can then fall between cell centres (sub-cell peak
# interpolation: on the phantom it raised the HiResCAM pointing-game hit rate from 0.65 to 0.72; docs/prediction.md).
CAM_INTERPOLATION_ORDER = 3


class _LogProbTarget:
    """CAM target: log of the summed softmax over the positive output units of one image."""

    def __init__(self, positive: Sequence[int]) -> None:
        self.positive = list(positive)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.logsumexp(logits[..., self.positive], dim=-1) - torch.logsumexp(logits, dim=-1)


def default_cam_layer(model: nn.Module) -> str:
    """Name (in `model.named_modules()`) of the CAM layer the stated rule picks (module docstring).

    The deepest entry of the trunk's timm `feature_info` with reduction 16; a trunk without one
    (or without a stride-16 stage) falls back to the trunk output ("trunk", stride 32).
    """
    body = getattr(getattr(model, "trunk", None), "body", None)
    info = getattr(body, "feature_info", None)
    if info is None:
        return "trunk"
    stages = [d["module"] for d in info if int(d.get("reduction", 0)) == CAM_STRIDE]
    return f"trunk.body.{stages[-1]}" if stages else "trunk"


def resolve_cam_layer(model: nn.Module, name: str = AUTO_LAYER) -> tuple[str, nn.Module]:
    """(name, module) of the CAM target layer: the rule for "auto", else the named module.

    Raises:
        ValueError: no module of that name, with the closest names.
    """
    name = default_cam_layer(model) if name in (AUTO_LAYER, "", None) else name
    modules = dict(model.named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"gradcam layer {name!r} is not a module of the {type(model).__name__}{hint} "
            f"(use 'auto' for the stride-16 rule, or e.g. 'top', 'trunk', {default_cam_layer(model)!r})"
        )
    return name, modules[name]


def last_spatial_module(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The last direct child of `model` that outputs a feature map larger than 1x1 (the old default layer).

    Kept for comparison in the localisation benchmark ("top" on demo-sized models); found by running
    `example` once, because registration order need not be execution order.
    """
    import torch

    seen: list[tuple[nn.Module, tuple[int, ...]]] = []

    def record(mod: nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            seen.append((mod, tuple(out.shape[-2:])))

    with forward_hooks(model.children(), record), torch.no_grad():
        model(example[:1])
    spatial = [mod for mod, (h, w) in seen if h * w > 1]
    if not spatial:
        raise ValueError(f"{type(model).__name__} has no child module producing a spatial feature map for Grad-CAM")
    return spatial[-1]


def _leaf_order(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """Leaf modules in the order they run on `example` (first call of each)."""
    import torch

    order: list[nn.Module] = []
    seen: set[int] = set()

    def record(mod: nn.Module, _inp: object, _out: object) -> None:
        if id(mod) not in seen:
            seen.add(id(mod))
            order.append(mod)

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    with forward_hooks(leaves, record), torch.no_grad():
        model(example[:1])
    return order


class GradCamRunner:
    """Class activation maps of a whole-image model: batch in -> (B, H, W) maps in [0, 1] on the input grid.

    Args:
        model: whole-image model in eval mode (used for inference only: its `requires_grad` flags are set).
        positive: output units that make up p(malignant).
        example: (B, 1, H, W) input of the size that will be used (to order the layers).
        layer: "auto" (the stride-16 rule) or a module name, e.g. "top", "trunk", "trunk.body.layer3".
        method: "gradcam", "gradcam++" or "hirescam".
    """

    def __init__(
        self,
        model: nn.Module,
        positive: Sequence[int],
        example: torch.Tensor,
        layer: str = AUTO_LAYER,
        method: str = DEFAULT_CAM_METHOD,
    ) -> None:
        import pytorch_grad_cam

        if method not in CAM_CLASSES:
            raise ValueError(f"gradcam method must be one of {list(CAM_METHODS)}, got {method!r}")
        self.layer_name, self.layer = resolve_cam_layer(model, layer)
        self.method = method
        self.model = model
        self._trainable = self._backward_modules(model, example)
        # where the layer's cells look (before the CAM library hooks the layer)
        self.origin = receptive_field_origin(model, self.layer, in_channels=example.shape[1], device=example.device)
        self.cam = getattr(pytorch_grad_cam, CAM_CLASSES[method])(model=model, target_layers=[self.layer])
        self.map_hw: tuple[int, int] | None = None
        # the library's own resize stretches the map over the image as if cell i covered the i-th 1/h of it;
        # no target size = the (B, h, w) map of the layer, placed by `cell_map_to_pixels` where its cells look
        self.cam.get_target_width_height = lambda _input: None
        self.positive = list(positive)

    def _backward_modules(self, model: nn.Module, example: torch.Tensor) -> set[int]:
        """ids of the leaves that must record gradients: the target layer and everything after it.

        Gradients are needed only from the output back to the target layer; keeping autograd away from
        the layers before it roughly halves the cost. When the target has no parameters of its own
        (VGG's ReLU), the last parametrised layer before it stays on, so its output requires grad.
        """
        order = _leaf_order(model, example)
        inside = {id(m) for m in self.layer.modules()}
        first = next((i for i, m in enumerate(order) if id(m) in inside), 0)
        keep = {id(m) for m in order[first:]}
        if not any(True for _ in self.layer.parameters()):
            before = [m for m in order[:first] if any(True for _ in m.parameters(recurse=False))]
            if before:
                keep.add(id(before[-1]))
        return keep

    def __call__(self, x: torch.Tensor, flips: bool = False) -> np.ndarray:
        """(B, 1, H, W) input -> (B, H, W) maps in [0, 1] on the input grid.

        flips: average the maps of the four flips of the input (each flipped back), as flip TTA averages
            p(malignant). Besides matching the averaged prediction, the flipped passes see the image on a
            cell grid offset by up to a cell (a flip puts cell centres at s i + origin on the other side),
            so their mean has twice the cell resolution; 4x the cost.
        """
        from mammokit.scoring.core import flip_averaged_maps

        for m in self.model.modules():  # set each time: several runners may share one model
            for p in m.parameters(recurse=False):
                p.requires_grad_(id(m) in self._trainable)
        maps = flip_averaged_maps(self._cam_maps, x) if flips else self._cam_maps(x)
        peak = maps.max(axis=(1, 2), keepdims=True)
        return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)  # (B, H, W) in [0, 1]

    def _cam_maps(self, x: torch.Tensor) -> np.ndarray:
        """One pass: (B, 1, H, W) -> (B, H, W) CAMs >= 0, each cell placed where it looks (not normalised)."""
        import torch

        with torch.enable_grad():
            cells = self.cam(input_tensor=x, targets=[_LogProbTarget(self.positive)] * x.shape[0])  # (B, h, w)
        # a bilateral model runs its trunk on the image and the other breast as one batch of 2B: the layer's maps
        # are (2B, h, w), the first B those of the images themselves (the partner's are in its own coordinates)
        cells = cells[: x.shape[0]]
        height, width = x.shape[-2:]
        h, w = cells.shape[-2:]
        self.map_hw = (h, w)  # cells of the target layer's map for the last input (its resolution)
        stride = (nominal_stride(height, h), nominal_stride(width, w))
        maps = cell_map_to_pixels(cells, (height, width), stride, (1, 1), self.origin, CAM_INTERPOLATION_ORDER)
        return np.clip(maps, 0.0, None)  # the cubic's ringing below 0
