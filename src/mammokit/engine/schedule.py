"""Staged fine-tuning: which parameters train in a stage, the frozen-BatchNorm policy, and the optimizer.

Stages follow the paper's (docs/training.md): patch 1 head, 2 last block + head, 3 all; whole image 1 new top
layers, 2 all. The model says which parameters a stage trains through `model.stage_parameters(stage)`;
everything else gets `requires_grad=False`. Every stage builds a fresh optimizer (fresh Adam moments), as
the original code did by re-compiling the Keras model.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from mammokit.engine.config import OptimConfig

log = logging.getLogger(__name__)

# Attributes holding the layers that are new relative to the ImageNet backbone (the only ones with L2).
_NEW_LAYER_ATTRS = ("head", "top")


def stage_trainable(model: nn.Module, stage: int) -> list[nn.Parameter]:
    """Apply stage `stage` (1-based) of the model's schedule and return the trainable parameters."""
    from mammokit.models.utils import set_trainable

    stage_parameters = getattr(model, "stage_parameters", None)
    if not callable(stage_parameters):
        raise TypeError(f"{type(model).__name__} has no stage_parameters(stage); staged training needs it")
    trainable = set_trainable(model, stage_parameters(stage))
    if not trainable:
        raise ValueError(f"stage {stage} trains no parameters; check {type(model).__name__}.stage_parameters()")
    return trainable


def regularised_parameters(model: nn.Module) -> set[int]:
    """ids of the kernels that get L2: weights (ndim >= 2) of the new layers (`head` / `top`) (docs/decisions.md, L2).

    A model may define `regularised_parameters()` to say so itself.
    """
    own = getattr(model, "regularised_parameters", None)
    if callable(own):
        return {id(p) for p in own()}
    ids: set[int] = set()
    for attr in _NEW_LAYER_ATTRS:
        sub = getattr(model, attr, None)
        if isinstance(sub, nn.Module):
            ids.update(id(p) for p in sub.parameters() if p.ndim >= 2)
    return ids


def build_optimizer(
    params: list[nn.Parameter], regularised: set[int], cfg: OptimConfig, lr: float
) -> torch.optim.Optimizer:
    """A fresh optimizer over `params` with L2 only on the `regularised` ones.

    `cfg.l2_style == "keras"`: coupled L2 equal to Keras' `l2(lambda)` (loss += lambda * sum W^2, whose gradient
    is 2*lambda*W), i.e. `weight_decay = 2*lambda` on a plain optimizer. "decoupled": AdamW-style decay
    `lambda` (Adam -> AdamW, NAdam with decoupled decay; SGD/RMSprop decay is the same either way).
    """
    decay = [p for p in params if id(p) in regularised]
    no_decay = [p for p in params if id(p) not in regularised]
    keras = cfg.l2_style == "keras"
    wd = 2.0 * cfg.weight_decay if keras else cfg.weight_decay
    groups = [
        g for g in ({"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]
    ]
    name = cfg.name
    if name in ("adam", "adamw"):
        if keras and name == "adam":
            return torch.optim.Adam(groups, lr=lr, eps=1e-8)
        return torch.optim.AdamW(groups, lr=lr, eps=1e-8)
    if name == "nadam":
        return torch.optim.NAdam(groups, lr=lr, decoupled_weight_decay=not keras)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {name!r}")
