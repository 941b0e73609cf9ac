"""Classification losses, including the paper's per-batch class-balanced cross-entropy (docs/training.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_balanced_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy where each class present in the batch contributes its mean loss once.

    The original Keras code gave each sample the weight 1 / (fraction of its class in the batch); with
    Keras' weighted mean this equals the sum, over the classes present, of the mean loss of that class.

    Args:
        logits: (B, C) unnormalised scores.
        target: (B,) class indices.

    Returns:
        Scalar loss.
    """
    per_sample = F.cross_entropy(logits.float(), target, reduction="none")  # (B,)
    num_classes = logits.shape[1]
    counts = torch.bincount(target, minlength=num_classes).to(per_sample.dtype)  # (C,)
    sums = torch.zeros(num_classes, dtype=per_sample.dtype, device=per_sample.device).index_add(0, target, per_sample)
    present = counts > 0
    return (sums[present] / counts[present]).sum()


def classification_loss(logits: torch.Tensor, target: torch.Tensor, *, balanced: bool) -> torch.Tensor:
    """Per-batch balanced loss when `balanced`, plain mean cross-entropy otherwise."""
    if balanced:
        return batch_balanced_cross_entropy(logits, target)
    return F.cross_entropy(logits.float(), target)
