"""Training-stage helpers shared by the patch and whole-image models: freezing and the BatchNorm policy.

BatchNorm policy for frozen layers (called by the engine after every ``model.train()``):

* ``"train"`` (Keras 2.0 behaviour, the paper): a BN layer whose affine weights are frozen still
  normalises with the batch statistics and keeps updating its running mean/var in training mode.
* ``"frozen"``: a BN layer whose parameters are all frozen is put in eval mode, so it normalises with
  its stored running statistics and does not update them (the usual PyTorch fine-tuning practice,
  better with the tiny whole-image batches).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from torch import nn

BNPolicy = Literal["train", "frozen"]
BN_POLICIES: tuple[str, ...] = ("train", "frozen")
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def set_trainable(model: nn.Module, params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Freeze every parameter of `model` except `params` (set requires_grad); returns the trainable list."""
    keep = {id(p) for p in params}
    trainable = []
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
        if id(p) in keep:
            trainable.append(p)
    return trainable


def freeze_batchnorm(module: nn.Module) -> int:
    """Put every BatchNorm layer inside `module` in eval mode (running statistics, no updates).

    Returns:
        The number of BN layers switched to eval mode.
    """
    n = 0
    for m in module.modules():
        if isinstance(m, _BN_TYPES):
            m.eval()
            n += 1
    return n


def apply_bn_policy(model: nn.Module, policy: str) -> int:
    """Apply the BatchNorm policy for frozen layers; call it after ``model.train()``.

    Args:
        model: the network, already in training mode.
        policy: ``"train"`` (Keras-like, nothing changes) or ``"frozen"`` (BN layers whose parameters
            all have ``requires_grad=False`` go to eval mode).

    Returns:
        The number of BN layers put in eval mode.
    """
    if policy not in BN_POLICIES:
        raise ValueError(f"unknown BatchNorm policy {policy!r}; use one of {BN_POLICIES}")
    if policy == "train" or not model.training:
        return 0
    n = 0
    for m in model.modules():
        if isinstance(m, _BN_TYPES):
            params = list(m.parameters(recurse=False))
            if all(not p.requires_grad for p in params):
                m.eval()
                n += 1
    return n


def input_channels(model: nn.Module) -> int:
    """Channels of a whole-image model's input: 2 for a bilateral model (image, other breast), else 1."""
    return int(getattr(model, "input_channels", 1))
