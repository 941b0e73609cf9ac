"""Top layers added on the whole-image trunk, chosen by configuration (a named preset or a dict spec).

Designs of Shen et al. 2019 (docs/models.md):

* A ``blocks: resnet`` — post-activation (ResNet v1) bottleneck units. Per block of ``r`` units with depth
  ``d``: unit 1 = Conv1x1(d, stride 2) -> BN -> ReLU -> Dropout; Conv3x3(d) -> BN -> ReLU -> Dropout;
  Conv1x1(d*e) -> BN; shortcut Conv1x1(d*e, stride 2) -> BN; add -> ReLU -> Dropout. Units 2..r: stride 1,
  identity shortcut. "[512-512-1024]x2" = depths (512, 512), repetitions (2, 2), enlarge e = 2.
* B ``blocks: vgg`` — per block r x [Conv3x3(d) -> BN -> ReLU -> Dropout] -> MaxPool 2x2/2; "512x1" =
  depths (512, 512), repetitions (1, 1).
* C ``heatmap`` + blocks — AvgPool(pool_size, pool_stride) -> Dropout -> 1x1 conv with the patch head's
  Linear weights -> ReLU (the heatmap, one channel per patch class) -> MaxPool(max_pool) -> blocks.
* D ``heatmap`` + ``fc`` — heatmap -> MaxPool -> Flatten -> Dropout -> [Linear -> BN -> ReLU -> Dropout]
  per FC layer (units halving, e.g. 64, 32); with ``shortcut`` the flattened heatmap is concatenated to the
  FC output, so the single Linear head computes Dense(fc) + Dense(heatmap) as in the original.

New convolution/linear layers: He-normal init, zero bias; BN with the Keras defaults (eps 1e-3,
momentum 0.99, i.e. PyTorch momentum 0.01). Conv layers have biases, as in the original.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

BN_EPS = 1e-3  # Keras BatchNormalization default
BN_MOMENTUM = 0.01  # Keras momentum 0.99 in PyTorch convention

TOP_PRESETS: dict[str, dict[str, Any]] = {
    # the paper's best ResNet50 design, "[512-512-1024]x2"
    "resnet_2x": {"blocks": "resnet", "depths": [512, 512], "repetitions": [2, 2], "enlarge": 2},
    # the paper's VGG16 design, "512x1"
    "vgg_512x1": {"blocks": "vgg", "depths": [512, 512], "repetitions": [1, 1]},
    # design C: heatmap (36x28 -> 30x22 for 224-px patches) then the ResNet blocks
    "heatmap_blocks": {
        "heatmap": {"pool_size": 7, "pool_stride": 1, "max_pool": 1},
        "blocks": "resnet",
        "depths": [512, 512],
        "repetitions": [2, 2],
        "enlarge": 2,
    },
    # design D (poster config): heatmap -> MaxPool 5 -> FC64 -> FC32 (+ shortcut)
    "heatmap_fc": {
        "heatmap": {"pool_size": 7, "pool_stride": 1, "max_pool": 5},
        "fc": {"units": [64, 32], "shortcut": True},
        "image_size": [1152, 896],
    },
    # global average pooling directly on the trunk
    "none": {},
}


class TopSpecError(ValueError):
    """A top-layer spec is malformed; the message names the key and the valid choices."""


@dataclass
class HeatmapSpec:
    pool_size: int = 7  # patch size / trunk stride (224 / 32)
    pool_stride: int = 1  # heatmap step in feature cells (1 cell = 32 px)
    max_pool: int = 1  # max-pool size (= stride) applied to the heatmap; 1 = none


@dataclass
class FCSpec:
    units: list[int] = field(default_factory=lambda: [64, 32])
    shortcut: bool = True


@dataclass
class TopSpec:
    """Parsed top-layer design (see module docstring)."""

    blocks: str | None = None  # "resnet", "vgg" or None
    depths: list[int] = field(default_factory=list)
    repetitions: list[int] = field(default_factory=list)
    enlarge: int = 2
    heatmap: HeatmapSpec | None = None
    fc: FCSpec | None = None
    image_size: list[int] | None = None  # needed by the FC design (flatten size); (height, width)
    # BatchNorm momentum of the new layers (PyTorch convention). Keras' 0.99 (= 0.01 here) is the paper's; its
    # running statistics need thousands of steps to settle, so short runs (demo, small datasets) give wildly
    # mis-scaled probabilities at eval time (AUC is unaffected). 0.1 is PyTorch's default.
    bn_momentum: float = BN_MOMENTUM

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_keys(d: dict[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in fields(cls)}
    for key in d:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TopSpecError(f"{where}: unknown key {key!r}{hint} (valid: {sorted(known)})")


def parse_top(top: str | dict[str, Any] | TopSpec) -> TopSpec:
    """A preset name, a dict spec or a TopSpec -> validated TopSpec."""
    if isinstance(top, TopSpec):
        return top
    if isinstance(top, str):
        if top not in TOP_PRESETS:
            raise TopSpecError(f"unknown top-layer preset {top!r}; choose one of {sorted(TOP_PRESETS)} or give a dict")
        top = TOP_PRESETS[top]
    if not isinstance(top, dict):
        raise TopSpecError(f"top must be a preset name or a dict, got {type(top).__name__}")
    d = copy.deepcopy(top)
    _check_keys(d, TopSpec, "top")
    hm = d.pop("heatmap", None)
    fc = d.pop("fc", None)
    if hm is not None:
        _check_keys(hm, HeatmapSpec, "top.heatmap")
    if fc is not None:
        _check_keys(fc, FCSpec, "top.fc")
    spec = TopSpec(
        **d,
        heatmap=HeatmapSpec(**hm) if hm is not None else None,
        fc=FCSpec(**fc) if fc is not None else None,
    )
    _validate(spec)
    return spec


def _validate(spec: TopSpec) -> None:
    if spec.blocks not in (None, "resnet", "vgg"):
        raise TopSpecError(f"top.blocks must be 'resnet', 'vgg' or null, got {spec.blocks!r}")
    if spec.blocks is not None:
        if not spec.depths or len(spec.depths) != len(spec.repetitions):
            raise TopSpecError(
                f"top.depths {spec.depths} and top.repetitions {spec.repetitions} must be non-empty and of equal length"
            )
        if any(d < 1 for d in spec.depths) or any(r < 1 for r in spec.repetitions):
            raise TopSpecError("top.depths and top.repetitions must be positive")
        if spec.enlarge < 1:
            raise TopSpecError(f"top.enlarge must be >= 1, got {spec.enlarge}")
    if spec.fc is not None:
        if spec.heatmap is None:
            raise TopSpecError("top.fc (design D) needs a top.heatmap; for FC on trunk features use blocks instead")
        if spec.blocks is not None:
            raise TopSpecError("top.fc and top.blocks are alternatives (design C or D); give one of them")
        if not spec.image_size or len(spec.image_size) != 2:
            raise TopSpecError("top.fc needs top.image_size [height, width] to size the flattened heatmap")
        if not spec.fc.units or any(u < 1 for u in spec.fc.units):
            raise TopSpecError(f"top.fc.units must be a non-empty list of positive ints, got {spec.fc.units}")
    if not 0.0 < spec.bn_momentum <= 1.0:
        raise TopSpecError(f"top.bn_momentum must be in (0, 1], got {spec.bn_momentum}")
    if spec.heatmap is not None:
        h = spec.heatmap
        if h.pool_size < 1 or h.pool_stride < 1 or h.max_pool < 1:
            raise TopSpecError(f"top.heatmap sizes must be >= 1, got {h}")


def _init_layer(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d | nn.Linear):
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")  # Keras he_normal
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _bn2d(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class BottleneckUnit(nn.Module):
    """Post-activation bottleneck: (B, in_ch, h, w) -> (B, depth*enlarge, h/stride, w/stride)."""

    def __init__(self, in_ch: int, depth: int, enlarge: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        out_ch = depth * enlarge
        self.conv1 = nn.Conv2d(in_ch, depth, 1, stride=stride)
        self.bn1 = _bn2d(depth)
        self.conv2 = nn.Conv2d(depth, depth, 3, padding=1)
        self.bn2 = _bn2d(depth)
        self.conv3 = nn.Conv2d(depth, out_ch, 1)
        self.bn3 = _bn2d(out_ch)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride), _bn2d(out_ch))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.act(self.bn1(self.conv1(x))))
        y = self.drop(self.act(self.bn2(self.conv2(y))))
        y = self.bn3(self.conv3(y))
        return self.drop(self.act(y + self.shortcut(x)))


def resnet_block(in_ch: int, depth: int, reps: int, enlarge: int, drop_rate: float) -> nn.Sequential:
    """One block of `reps` bottleneck units; the first halves the resolution (stride 2)."""
    units = [BottleneckUnit(in_ch, depth, enlarge, 2, drop_rate)]
    units += [BottleneckUnit(depth * enlarge, depth, enlarge, 1, drop_rate) for _ in range(reps - 1)]
    return nn.Sequential(*units)


def vgg_block(in_ch: int, depth: int, reps: int, drop_rate: float) -> nn.Sequential:
    """`reps` x [Conv3x3 -> BN -> ReLU -> Dropout] -> MaxPool 2x2/2."""
    layers: list[nn.Module] = []
    for i in range(reps):
        layers += [
            nn.Conv2d(in_ch if i == 0 else depth, depth, 3, padding=1),
            _bn2d(depth),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
        ]
    # ceil_mode: identical to Keras' floor pooling on even maps (all maps at 1152x896), but a 1-pixel-wide map
    # (small inputs, e.g. 128x96 -> 4x3 -> 2x2 -> 1x1) still pools to 1 instead of failing.
    layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
    return nn.Sequential(*layers)


class HeatmapLayer(nn.Module):
    """Per-location patch classifier: (B, C, h, w) -> (B, n_classes, h', w') with ReLU activation.

    AvgPool(pool_size, pool_stride) over the trunk map reproduces the patch head's global average pool
    for one patch-sized window; the 1x1 conv carries the patch head's Linear (copied by `load_patch_head`).
    """

    def __init__(self, in_ch: int, n_classes: int, spec: HeatmapSpec, drop_rate: float) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(spec.pool_size, stride=spec.pool_stride)
        self.drop = nn.Dropout(drop_rate)
        self.conv = nn.Conv2d(in_ch, n_classes, 1)
        self.act = nn.ReLU(inplace=False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation heatmap (B, n_classes, h', w'): the patch classifier's logits per window."""
        return self.conv(self.drop(self.pool(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.logits(x))

    @torch.no_grad()
    def load_patch_head(self, fc: nn.Linear) -> None:
        """Copy a patch head's Linear (n_classes, C) into the 1x1 conv (n_classes, C, 1, 1)."""
        if self.conv.weight.shape[:2] != fc.weight.shape:
            raise ValueError(
                f"patch head Linear {tuple(fc.weight.shape)} does not fit the heatmap conv "
                f"{tuple(self.conv.weight.shape[:2])}; patch_num_classes or the trunk differ"
            )
        self.conv.weight.copy_(fc.weight[:, :, None, None])
        self.conv.bias.copy_(fc.bias)


class TopLayers(nn.Module):
    """The configured top: trunk map (B, C, h, w) -> map (B, out_features, h'', w'') or vector (B, out_features).

    Args:
        spec: parsed design.
        in_ch: trunk channels.
        drop_rate: dropout after every new layer (paper hidden_dropout).
        patch_num_classes: heatmap channels (design C/D).
        feature_hw: trunk output size (h, w) for `spec.image_size`; needed by design D only.
    """

    def __init__(
        self,
        spec: TopSpec,
        in_ch: int,
        drop_rate: float = 0.0,
        patch_num_classes: int | None = None,
        feature_hw: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        ch = in_ch
        self.heatmap: HeatmapLayer | None = None
        self.hm_pool: nn.Module = nn.Identity()
        if spec.heatmap is not None:
            if not patch_num_classes:
                raise TopSpecError("heatmap top layers need patch_num_classes (the patch classifier's class count)")
            self.heatmap = HeatmapLayer(ch, patch_num_classes, spec.heatmap, drop_rate)
            ch = patch_num_classes
            if spec.heatmap.max_pool > 1:
                self.hm_pool = nn.MaxPool2d(spec.heatmap.max_pool, stride=spec.heatmap.max_pool)
        blocks: list[nn.Module] = []
        if spec.blocks == "resnet":
            for d, r in zip(spec.depths, spec.repetitions, strict=True):
                blocks.append(resnet_block(ch, d, r, spec.enlarge, drop_rate))
                ch = d * spec.enlarge
        elif spec.blocks == "vgg":
            for d, r in zip(spec.depths, spec.repetitions, strict=True):
                blocks.append(vgg_block(ch, d, r, drop_rate))
                ch = d
        self.blocks = nn.Sequential(*blocks)
        self.fc: nn.Sequential | None = None
        self.flatten_features = 0
        if spec.fc is not None:
            if feature_hw is None:
                raise TopSpecError("the FC top needs the trunk's output size (feature_hw)")
            h, w = _heatmap_hw(feature_hw, spec.heatmap)  # type: ignore[arg-type]
            if h < 1 or w < 1:
                raise TopSpecError(f"image_size {spec.image_size} is too small for the heatmap pooling {spec.heatmap}")
            self.flatten_features = ch * h * w
            layers: list[nn.Module] = [nn.Flatten(1), nn.Dropout(drop_rate)]
            n_in = self.flatten_features
            for u in spec.fc.units:
                layers += [nn.Linear(n_in, u), nn.BatchNorm1d(u, eps=BN_EPS, momentum=BN_MOMENTUM)]
                layers += [nn.ReLU(inplace=True), nn.Dropout(drop_rate)]
                n_in = u
            self.fc = nn.Sequential(*layers)
            ch = n_in + (self.flatten_features if spec.fc.shortcut else 0)
        self.out_features = ch
        for name, m in self.named_modules():
            if not name.startswith("heatmap"):
                _init_layer(m)
        if self.heatmap is not None:
            _init_layer(self.heatmap.conv)

    @property
    def outputs_map(self) -> bool:
        """True if forward returns a feature map (then the head pools it), False for a vector (design D)."""
        return self.fc is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.heatmap is not None:
            x = self.hm_pool(self.heatmap(x))
        x = self.blocks(x)
        if self.fc is not None:
            y = self.fc(x)
            if self.spec.fc is not None and self.spec.fc.shortcut:
                # Dense(fc) + Dense(flat heatmap) == one Linear over the concatenation (the head).
                y = torch.cat([y, torch.flatten(x, 1)], dim=1)
            return y
        return x


def _heatmap_hw(feature_hw: tuple[int, int], hm: HeatmapSpec) -> tuple[int, int]:
    def out(n: int) -> int:
        n = (n - hm.pool_size) // hm.pool_stride + 1
        return n // hm.max_pool

    return out(feature_hw[0]), out(feature_hw[1])
