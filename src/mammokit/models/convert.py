"""Patch -> whole-image conversion: reuse the patch classifier's trunk (selected by name) on the full image."""

from __future__ import annotations

import copy
import logging
from typing import Any

from mammokit.models.patch import PatchClassifier
from mammokit.models.tops import parse_top
from mammokit.models.whole import WholeImageClassifier

log = logging.getLogger(__name__)


def whole_from_patch(
    patch_model: PatchClassifier, *, top: str | dict[str, Any] = "resnet_2x", **kwargs: Any
) -> WholeImageClassifier:
    """Build a whole-image classifier whose trunk is a copy of `patch_model.trunk`.

    The trunk is the module that `forward_features` runs (``PatchClassifier.trunk``), i.e. the kept layer
    is chosen by name, never by a negative layer index. For heatmap designs the patch head's Linear is
    copied into the heatmap 1x1 conv. The patch model is not modified.

    Args:
        patch_model: a trained patch classifier.
        top: top-layer preset or dict spec (see `models.tops`).
        **kwargs: other `WholeImageClassifier` kwargs (num_classes, drop_rate, grad_checkpointing, ...);
            backbone, in_chans and patch_num_classes are taken from the patch model.

    Returns:
        The whole-image model; its `arch_kwargs` rebuild the same architecture with
        ``create_model("whole_image", **arch_kwargs, pretrained=None)``.
    """
    if not isinstance(patch_model, PatchClassifier):
        raise TypeError(f"whole_from_patch needs a PatchClassifier, got {type(patch_model).__name__}")
    for fixed in ("backbone", "in_chans", "pretrained"):
        if fixed in kwargs:
            raise TypeError(f"whole_from_patch: {fixed!r} comes from the patch model; do not pass it")
    spec = parse_top(top)
    patch_classes = kwargs.pop("patch_num_classes", None)
    if spec.heatmap is not None:
        if patch_classes is not None and patch_classes != patch_model.num_classes:
            raise ValueError(
                f"patch_num_classes={patch_classes} but the patch model has {patch_model.num_classes} classes"
            )
        patch_classes = patch_model.num_classes
    whole = WholeImageClassifier(
        backbone=patch_model.backbone,
        top=top,
        patch_num_classes=patch_classes,
        pretrained=None,
        in_chans=patch_model.in_chans,
        **kwargs,
    )
    checkpointing = whole.grad_checkpointing
    whole.trunk.load_state_dict(copy.deepcopy(patch_model.trunk.state_dict()))
    whole.set_grad_checkpointing(checkpointing)
    if whole.top.heatmap is not None:
        whole.top.heatmap.load_patch_head(patch_model.head.fc)
    log.info("converted patch classifier (%s) to whole-image model with top %s", patch_model.backbone, top)
    return whole
