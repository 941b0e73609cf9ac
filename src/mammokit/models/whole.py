"""The whole-image classifier: the patch trunk applied to the full image + configured top layers + GAP + Linear."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mammokit.models.backbones import Trunk, feature_shape
from mammokit.models.pretrained import load_pretrained
from mammokit.models.registry import register_model
from mammokit.models.tops import TopLayers, TopSpec, parse_top


class WholeHead(nn.Module):
    """[global average pool if the input is a map] -> dropout -> Linear(num_classes)."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes)
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = torch.flatten(self.pool(x), 1)
        return self.fc(self.drop(x))


@register_model("whole_image")
class WholeImageClassifier(nn.Module):
    """Whole-image classifier h = g∘f of Shen et al. 2019.

    Args:
        backbone: timm model name of the trunk (the patch classifier's).
        top: preset name ("resnet_2x", "vgg_512x1", "heatmap_blocks", "heatmap_fc", "none") or a dict spec
            (see `models.tops`).
        num_classes: output classes (2: negative, positive).
        patch_num_classes: heatmap channels for the heatmap designs (the patch classifier's class count).
        pretrained: initialisation of the trunk when not converted from a patch model (None or "imagenet"
            or a file; the `--no-patch-init` baseline).
        in_chans: input channels (1 = grayscale).
        grad_checkpointing: recompute trunk activations in backward (activation checkpointing) to fit
            1152x896 training in less memory.
        drop_rate: dropout in the top layers and before the head (paper hidden_dropout).
    """

    def __init__(
        self,
        backbone: str,
        top: str | dict[str, Any] = "resnet_2x",
        num_classes: int = 2,
        patch_num_classes: int | None = None,
        pretrained: str | None = None,
        in_chans: int = 1,
        grad_checkpointing: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.top_spec: TopSpec = parse_top(top)
        # kept as given (a preset name stays a name in model.json); a TopSpec object becomes its dict
        self.top_config: str | dict[str, Any] = self.top_spec.to_dict() if isinstance(top, TopSpec) else top
        self.num_classes = int(num_classes)
        self.patch_num_classes = int(patch_num_classes) if patch_num_classes is not None else None
        self.in_chans = int(in_chans)
        self.drop_rate = float(drop_rate)
        self.trunk = Trunk(backbone, in_chans=in_chans)
        load_pretrained(self.trunk.body, backbone, pretrained)
        feature_hw = None
        if self.top_spec.image_size is not None:
            h, w = self.top_spec.image_size
            _, fh, fw = feature_shape(self.trunk, int(h), int(w), in_chans)
            feature_hw = (fh, fw)
        self.top = TopLayers(self.top_spec, self.trunk.num_features, drop_rate, self.patch_num_classes, feature_hw)
        for module in self.top.modules():  # one place for the new layers' BN momentum (see TopSpec.bn_momentum)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = self.top_spec.bn_momentum
        self.head = WholeHead(self.top.out_features, num_classes, drop_rate)
        if grad_checkpointing:
            self.set_grad_checkpointing(True)

    @property
    def grad_checkpointing(self) -> bool:
        return self.trunk.grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in the trunk (the memory-heavy part at 1152x896)."""
        self.trunk.set_grad_checkpointing(enable)

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        """JSON-able kwargs that rebuild this architecture (weights excluded, so no `pretrained`)."""
        return {
            "backbone": self.backbone,
            "top": self.top_config,
            "num_classes": self.num_classes,
            "patch_num_classes": self.patch_num_classes,
            "in_chans": self.in_chans,
            "grad_checkpointing": self.grad_checkpointing,
            "drop_rate": self.drop_rate,
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, in_chans, H, W) -> trunk feature map (B, C, H/32, W/32)."""
        return self.trunk(x)

    def forward_heatmap(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> per-window patch-class logits (B, patch_num_classes, h', w') (heatmap designs only)."""
        if self.top.heatmap is None:
            raise ValueError("this whole-image model has no heatmap layer (top design A/B); use Grad-CAM instead")
        return self.top.heatmap.logits(self.trunk(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Trunk feature map -> logits (B, num_classes)."""
        return self.head(self.top(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, in_chans, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def stage_parameter_names(self, stage: int) -> list[str]:
        """Parameters trained in `stage` of the 2-stage schedule.

        1 = the new layers only (top + head; the heatmap conv copied from the patch head stays frozen, as in
        the original); 2 = all layers (end to end).
        """
        if stage == 1:
            names = [f"top.{n}" for n, _ in self.top.named_parameters() if not n.startswith("heatmap.")]
            return names + [f"head.{n}" for n, _ in self.head.named_parameters()]
        if stage == 2:
            return [n for n, _ in self.named_parameters()]
        raise ValueError(f"whole-image training has stages 1 and 2; got {stage}")

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Parameters trained in `stage` (see `stage_parameter_names`)."""
        wanted = set(self.stage_parameter_names(stage))
        return [p for n, p in self.named_parameters() if n in wanted]
