"""Heatmaps in the prepared-image geometry: patch-classifier probability maps and class activation maps.

Two kinds, both returned as float32 maps on the *prepared* pixel grid (the predictor maps them back
onto the original mammogram with `Geometry.to_original`):

* **patch** (Shen et al. 2019, the original code's "fprop" mode; docs/decisions.md, "patch heatmaps"): the
  patch classifier's trunk is run fully convolutionally over the whole prepared image; its feature map
  (stride s, usually 32) is average-pooled over windows the size of one training patch (patch_size / s
  cells, stride 1), and the patch head is applied at every window position. Because the head starts with global average
  pooling, a pooled window fed to the head is exactly the classifier's output for a patch whose
  receptive field is that window, so cell (i, j) is p(class | patch at rows s*i .. s*i + patch_h).
  A finer map stride t = s / k is obtained by "shift and stitch": the trunk also runs on the image
  shifted by t, 2t, ... (k x k passes) and the k x k interleaved maps form one map at stride t.
  Softmax over classes gives one probability map per patch class (values in [0, 1], comparable
  across images); `malignant_map` sums the malignant classes.
* **cam** (Grad-CAM, Grad-CAM++ or HiResCAM from pytorch-grad-cam) of the whole-image model at one
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

import contextlib
import difflib
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

# CAM method names (the --gradcam-method choices) -> pytorch-grad-cam class names
CAM_METHODS: dict[str, str] = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM"}
DEFAULT_CAM_METHOD = "hirescam"  # localises best on the phantom and on mini-MIAS (docs/prediction.md)
AUTO_LAYER = "auto"  # the rule above; any other value names a module of the whole-image model
CAM_STRIDE = 16  # output stride of the stage the rule picks
# Cell maps -> pixels: bilinear for patch probabilities (stay in [0, 1], zero far from any hot window);
# cubic for CAMs, whose maximum can then fall between cell centres (sub-cell peak interpolation: on the
# phantom it raised the HiResCAM pointing-game hit rate from 0.65 to 0.72; docs/prediction.md).
MAP_INTERPOLATION_ORDER = 1
CAM_INTERPOLATION_ORDER = 3


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
        s = (_nominal_stride(height, feats.shape[-2]), _nominal_stride(width, feats.shape[-1]))
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


def _nominal_stride(size: int, cells: int) -> float:
    """The trunk's output stride: the power of two nearest size / cells (344 px -> 11 cells is stride 32, not 31.3)."""
    return float(2 ** round(math.log2(size / cells)))


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


@contextlib.contextmanager
def _forward_hooks(modules: Iterable[nn.Module], hook: Callable[..., None]) -> Iterator[None]:
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
        with _forward_hooks([target], grab), contextlib.suppress(_StopForward):
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


def _window_probs(patch_model: nn.Module, feats: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) trunk features -> (B, n_classes, h', w') softmax of the head at every window."""
    import torch

    from mammokit.infer.core import class_probabilities

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

    with _forward_hooks(model.children(), record), torch.no_grad():
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
    with _forward_hooks(leaves, record), torch.no_grad():
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

        if method not in CAM_METHODS:
            raise ValueError(f"gradcam method must be one of {sorted(CAM_METHODS)}, got {method!r}")
        self.layer_name, self.layer = resolve_cam_layer(model, layer)
        self.method = method
        self.model = model
        self._trainable = self._backward_modules(model, example)
        # where the layer's cells look (before the CAM library hooks the layer)
        self.origin = receptive_field_origin(model, self.layer, in_channels=example.shape[1], device=example.device)
        self.cam = getattr(pytorch_grad_cam, CAM_METHODS[method])(model=model, target_layers=[self.layer])
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
        from mammokit.infer.core import flip_averaged_maps

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
        stride = (_nominal_stride(height, h), _nominal_stride(width, w))
        maps = cell_map_to_pixels(cells, (height, width), stride, (1, 1), self.origin, CAM_INTERPOLATION_ORDER)
        return np.clip(maps, 0.0, None)  # the cubic's ringing below 0
