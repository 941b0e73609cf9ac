"""The patch classifier: an (ImageNet-initialised) timm trunk + global average pool -> dropout -> Linear."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mammokit.models.backbones import Trunk, parameters_under
from mammokit.models.pretrained import load_pretrained
from mammokit.models.registry import register_model


class PatchHead(nn.Module):
    """Global average pool -> dropout -> Linear: feature map (B, C, h, w) -> logits (B, num_classes)."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.5) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


@register_model("patch_classifier")
class PatchClassifier(nn.Module):
    """Patch classifier of Shen et al. 2019 on a timm backbone.

    Args:
        backbone: timm model name ("resnet50", "vgg16", "efficientnet_lite0", "resnet18", ...).
        num_classes: output classes (5 in the paper: background + 4 lesion classes).
        pretrained: None (random), "imagenet" or a path to a state dict (see `models.pretrained`).
        in_chans: input channels; 1 for grayscale (the stem's RGB filters are summed).
        drop_rate: dropout before the Linear layer (paper 0.5).
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        pretrained: str | None = None,
        in_chans: int = 1,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.drop_rate = float(drop_rate)
        self.trunk = Trunk(backbone, in_chans=in_chans)
        load_pretrained(self.trunk.body, backbone, pretrained)
        self.num_features = self.trunk.num_features
        self.head = PatchHead(self.num_features, num_classes, drop_rate)

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        """JSON-able kwargs that rebuild this architecture (weights excluded, so no `pretrained`)."""
        return {
            "backbone": self.backbone,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "drop_rate": self.drop_rate,
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, in_chans, H, W) -> trunk feature map (B, C, H/32, W/32)."""
        return self.trunk(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map (B, C, h, w) -> logits (B, num_classes)."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, in_chans, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def stage_parameter_names(self, stage: int) -> list[str]:
        """Names of the parameters trained in `stage` of the paper's 3-stage schedule.

        1 = head only; 2 = the last trunk block (by name, see `Trunk.last_block_prefixes`) + head; 3 = all.
        """
        head = [f"head.{n}" for n, _ in self.head.named_parameters()]
        if stage == 1:
            return head
        if stage == 2:
            prefixes = self.trunk.last_block_prefixes()
            return [f"trunk.{n}" for n, _ in parameters_under(self.trunk, prefixes)] + head
        if stage == 3:
            return [n for n, _ in self.named_parameters()]
        raise ValueError(f"patch training has stages 1, 2 and 3; got {stage}")

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Parameters trained in `stage` (see `stage_parameter_names`)."""
        wanted = set(self.stage_parameter_names(stage))
        return [p for n, p in self.named_parameters() if n in wanted]
