"""PyTorch layers with Keras 2 (TensorFlow backend) semantics, on NCHW tensors.

Where Keras and PyTorch differ:

* ``padding="same"``: TensorFlow pads ``total = max((ceil(n/s) - 1)*s + (k-1)*d + 1 - n, 0)`` pixels per axis,
  ``total // 2`` before and the rest after, so with stride 2 the extra pixel goes to the bottom/right.
  PyTorch's ``padding=`` is symmetric. When the amount is the same on both sides for every input size
  (stride 1 with an odd kernel, or a 1x1 kernel), the native symmetric padding is used; otherwise the
  padding is computed from the input size at run time (`tf_same_pads`).
* ``padding="valid"`` pooling floors the output size (PyTorch's default; mammokit's own VGG top uses
  ceil_mode, which differs on odd maps, which is one reason the import has its own layers).
* Average pooling with ``"same"`` divides by the number of real (unpadded) cells, as TensorFlow does.
* ``Dense`` on a feature map acts on the channel axis; ``Flatten`` flattens in (H, W, C) order.
* ``BatchNormalization`` keeps its stored epsilon; Keras momentum m is PyTorch momentum 1 - m.
* Theano files: ``padding="same"`` (odd kernels) is Theano's ``border_mode="half"``, ``(k-1)*d // 2`` on both
  sides at any stride (``same_mode="symmetric"``); a channels_first ``Flatten`` keeps (C, H, W) order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def tf_same_pads(n: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's "same" for length n, kernel k, stride s, dilation d."""
    total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def _symmetric_same(kernel: list[int], strides: list[int], dilation: list[int]) -> list[int] | None:
    """Native symmetric padding equal to TF "same" for every input size, or None if there is none."""
    pads = []
    for k, s, d in zip(kernel, strides, dilation, strict=True):
        span = (k - 1) * d
        if k == 1:
            pads.append(0)  # a 1x1 window never needs padding, whatever the stride
        elif s == 1 and span % 2 == 0:
            pads.append(span // 2)
        else:
            return None
    return pads


def _pad_same(
    x: torch.Tensor, kernel: list[int], strides: list[int], dilation: list[int], value: float
) -> torch.Tensor:
    (top, bottom), (left, right) = (tf_same_pads(int(n), k, s, d) for n, k, s, d in
                                    zip(x.shape[-2:], kernel, strides, dilation, strict=True))  # fmt: skip
    if not (top or bottom or left or right):
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class KerasConv2d(nn.Conv2d):
    """Keras Conv2D (activation applied by the graph). Weight (out, in, kh, kw) = Keras kernel HWIO permuted."""

    def __init__(
        self,
        in_channels: int,
        filters: int,
        kernel: list[int],
        strides: list[int],
        dilation: list[int],
        padding: str,
        use_bias: bool,
        same_mode: str = "tensorflow",
    ) -> None:
        if padding == "same" and same_mode == "symmetric":  # Theano: half padding, whatever the stride
            native: list[int] | None = [(k - 1) * d // 2 for k, d in zip(kernel, dilation, strict=True)]
        elif padding == "same":
            native = _symmetric_same(kernel, strides, dilation)
        else:
            native = [0, 0]
        super().__init__(
            in_channels, filters, tuple(kernel), tuple(strides), tuple(native or (0, 0)), tuple(dilation), bias=use_bias
        )
        self.keras_kernel, self.keras_strides, self.keras_dilation = list(kernel), list(strides), list(dilation)
        self.dynamic_same = native is None  # TF "same" that may be asymmetric: pad at run time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_same:
            x = _pad_same(x, self.keras_kernel, self.keras_strides, self.keras_dilation, 0.0)
        return super().forward(x)


class KerasPool2d(nn.Module):
    """Keras MaxPooling2D / AveragePooling2D with "valid" (floor) or TensorFlow "same" padding."""

    def __init__(self, kind: str, pool: list[int], strides: list[int], padding: str) -> None:
        super().__init__()
        if kind not in ("max", "avg"):
            raise ValueError(f"pool kind must be 'max' or 'avg', got {kind!r}")
        self.kind, self.pool, self.strides, self.padding = kind, list(pool), list(strides), padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = tuple(self.pool), tuple(self.strides)
        if self.padding == "valid":
            return F.max_pool2d(x, k, s) if self.kind == "max" else F.avg_pool2d(x, k, s)
        if self.kind == "max":
            return F.max_pool2d(_pad_same(x, self.pool, self.strides, [1, 1], float("-inf")), k, s)
        # TF averages over the real cells only: sum of padded x / number of real cells in each window
        ones = torch.ones_like(x[:1, :1])
        total = F.avg_pool2d(_pad_same(x, self.pool, self.strides, [1, 1], 0.0), k, s)
        count = F.avg_pool2d(_pad_same(ones, self.pool, self.strides, [1, 1], 0.0), k, s)
        return total / count


class KerasZeroPad2d(nn.Module):
    """ZeroPadding2D: (top, bottom, left, right) zeros."""

    def __init__(self, pad: list[int]) -> None:
        super().__init__()
        self.pad = list(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, b, l, r = self.pad  # noqa: E741
        return F.pad(x, (l, r, t, b))


class KerasBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNormalization on the channel axis of (N, C) or (N, C, H, W); a `_BatchNorm`, so mammokit's
    frozen-BN policy (`models.utils.apply_bn_policy`) applies to it."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 4):
            raise ValueError(f"expected a 2-D or 4-D input, got {input.dim()}-D")


class KerasDense(nn.Linear):
    """Dense: on a vector (N, in) as usual; on a map (N, C, H, W) per location over the channel axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return F.linear(x.movedim(1, -1), self.weight, self.bias).movedim(-1, 1)
        return super().forward(x)


class KerasFlatten(nn.Module):
    """Flatten in the file's order: channels_last (N, C, H, W) -> (N, H*W*C); channels_first ("chw") -> C*H*W."""

    def __init__(self, order: str = "hwc") -> None:
        super().__init__()
        if order not in ("hwc", "chw"):
            raise ValueError(f"flatten order must be 'hwc' or 'chw', got {order!r}")
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and self.order == "hwc":
            return x.permute(0, 2, 3, 1).flatten(1)
        return x.flatten(1)


class GlobalPool2d(nn.Module):
    """GlobalAveragePooling2D / GlobalMaxPooling2D: (N, C, H, W) -> (N, C)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if self.kind == "avg" else x.amax(dim=(2, 3))


class Activation(nn.Module):
    """Keras activation by name; softmax runs over the channel/feature axis (Keras' last axis)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_activation(x, self.name)


def apply_activation(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "linear":
        return x
    if name == "relu":
        return F.relu(x)
    if name == "softmax":
        return torch.softmax(x, dim=1)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "tanh":
        return torch.tanh(x)
    raise ValueError(f"unknown activation {name!r}")


class Add(nn.Module):
    """Keras Add: element-wise sum of the inputs."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out
