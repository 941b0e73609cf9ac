"""The whole-image classifier: the patch trunk applied to the full image + configured top layers + GAP + Linear.

With `bilateral` set, the model also sees the same view of the woman's other breast (input channel 1,
paired by `data.pairs`): the shared trunk and top run on both images and the head combines the two pooled
feature vectors by one of `BILATERAL_RULES` (docs/models.md, "Both breasts").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mammokit.models.backbones import Trunk, feature_shape
from mammokit.models.pretrained import load_pretrained
from mammokit.models.registry import register_model
from mammokit.models.tops import TopLayers, TopSpec, parse_top

# How the bilateral head combines the image's pooled features h with those of the other breast h':
#   "concat":   logits = W [h, h - h'] + b                (the difference is a learned feature; W's second
#                                                          half starts at 0, so training starts single-image)
#   "subtract": logits = (W h + b) - a (W h' + b), a >= 0 learned, starts at 0.5 (the post-hoc rule
#                                                          "score minus half the other breast's", trained)
BILATERAL_RULES: tuple[str, ...] = ("concat", "subtract")


class WholeHead(nn.Module):
    """[global average pool if the input is a map] -> dropout -> Linear(num_classes)."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes)
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Top output (B, D, h, w) or (B, D) -> (B, D) feature vector (global average pool of a map)."""
        return torch.flatten(self.pool(x), 1) if x.dim() == 4 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.pooled(x)))


class BilateralHead(nn.Module):
    """Pooled features of the image and of the other breast (B, D) x 2 -> logits (B, num_classes)."""

    def __init__(self, in_features: int, num_classes: int, rule: str, drop_rate: float = 0.0) -> None:
        super().__init__()
        if rule not in BILATERAL_RULES:
            raise ValueError(f"bilateral must be one of {BILATERAL_RULES} (or None for one image), got {rule!r}")
        self.rule = rule
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        width = 2 * in_features if rule == "concat" else in_features
        self.fc = nn.Linear(width, num_classes)
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)
        if rule == "concat":
            with torch.no_grad():
                self.fc.weight[:, in_features:].zero_()  # starts as the single-image head
        # softplus(raw) = a >= 0; raw = log(e^0.5 - 1) gives a = 0.5 at the start
        self.other_weight_raw = nn.Parameter(torch.tensor(-0.4328)) if rule == "subtract" else None

    @property
    def other_weight(self) -> float | None:
        """a of the "subtract" rule (None for "concat")."""
        if self.other_weight_raw is None:
            return None
        return float(nn.functional.softplus(self.other_weight_raw.detach()))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(x), 1) if x.dim() == 4 else x

    def forward(self, own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        h, h_other = self.drop(self.pooled(own)), self.drop(self.pooled(other))
        if self.rule == "concat":
            return self.fc(torch.cat([h, h - h_other], dim=1))
        assert self.other_weight_raw is not None
        a = nn.functional.softplus(self.other_weight_raw)
        return self.fc(h) - a * self.fc(h_other)


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
        bilateral: None (one image, input (B, 1, H, W)) or a rule of `BILATERAL_RULES`: the input is then
            (B, 2, H, W), channel 0 the image and channel 1 the same view of the other breast (`data.pairs`);
            trunk and top are shared by both.
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
        bilateral: str | None = None,
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
        self.bilateral = bilateral
        self.head: nn.Module = (
            WholeHead(self.top.out_features, num_classes, drop_rate)
            if bilateral is None
            else BilateralHead(self.top.out_features, num_classes, bilateral, drop_rate)
        )
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
            "bilateral": self.bilateral,
        }

    @property
    def input_channels(self) -> int:
        """Channels of the model's input: 1, or 2 for a bilateral model (the image, then the other breast)."""
        return 1 if self.bilateral is None else 2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, in_chans, H, W) -> trunk feature map (B, C, H/32, W/32).

        Bilateral: (B, 2, H, W) -> (B, 2C, H/32, W/32), channels [0, C) of the image and [C, 2C) of the other
        breast; both go through the trunk as one batch of 2B (one trunk, shared weights).
        """
        if self.bilateral is None:
            return self.trunk(x)
        b = x.shape[0]
        both = self.trunk(torch.cat([x[:, :1], x[:, 1:2]], dim=0))  # (2B, C, h, w)
        return torch.cat([both[:b], both[b:]], dim=1)

    def forward_heatmap(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> per-window patch-class logits (B, patch_num_classes, h', w') (heatmap designs only).

        Bilateral: the map of the image itself (channel 0).
        """
        if self.top.heatmap is None:
            raise ValueError("this whole-image model has no heatmap layer (top design A/B); use Grad-CAM instead")
        return self.top.heatmap.logits(self.trunk(x[:, :1] if self.bilateral is not None else x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Trunk feature map -> logits (B, num_classes) (bilateral: the (B, 2C, h, w) map of `forward_features`)."""
        if self.bilateral is None:
            return self.head(self.top(features))
        b, c = features.shape[0], features.shape[1] // 2
        tops = self.top(torch.cat([features[:, :c], features[:, c:]], dim=0))  # (2B, ...) shared top
        return self.head(tops[:b], tops[b:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, in_chans, H, W) (bilateral: (B, 2, H, W)) -> logits (B, num_classes)."""
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
