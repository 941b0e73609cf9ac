"""A network imported from a Keras 2 HDF5 file: the parsed layer graph (`models.keras_graph`) run in PyTorch.

`KerasGraphNet` (registered as ``"keras_graph"``) takes the grayscale image ``(B, 1, H, W)`` normalised as
the original code did (0..255 minus the featurewise mean), replicates it to the 3 channels the Keras network
expects (exactly what the original did before feeding it), and runs the layers in the stored order. It is
split at the trunk/top boundary into two children, ``trunk`` (the patch classifier's convolutional part) and
``top`` (the whole-image top layers, or the patch head), so that finetuning (stage 1 = top, stage 2 = all),
Grad-CAM and the L2 on new layers work as for mammokit's own whole-image models. The output is logits:
the Keras output softmax is left to the caller (`softmax(logits)` equals the Keras output).

`load_keras_weights` fills it from the stored tensors, matching each tensor to its layer by name, checking
its shape, and failing unless every tensor is used exactly once and every parameter is filled. Keras 1 names
(``conv1_W:0``), Keras 1 channels_first kernels (``kernel_layout="OIHW"``) and Theano's flipped kernels
(``flip_kernel``) are converted as Keras 2's own loader converted them.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import nn

from mammokit.io.keras_h5 import KerasImportError, StoredWeight
from mammokit.models import keras_layers as kl
from mammokit.models.keras_graph import INPUT, WEIGHT_KINDS
from mammokit.models.registry import register_model


def _build_layer(spec: dict[str, Any]) -> nn.Module:
    op = spec["op"]
    if op == "conv2d":
        return kl.KerasConv2d(spec["in_channels"], spec["filters"], spec["kernel"], spec["strides"],
                              spec["dilation"], spec["padding"], spec["use_bias"],
                              spec.get("same_mode", "tensorflow"))  # fmt: skip
    if op == "dense":
        return kl.KerasDense(spec["in_features"], spec["units"], bias=spec["use_bias"])
    if op == "batch_norm":
        return kl.KerasBatchNorm(spec["channels"], eps=spec["epsilon"], momentum=1.0 - spec["momentum"])
    if op == "activation":
        return kl.Activation(spec["activation"])
    if op == "zero_pad":
        return kl.KerasZeroPad2d(spec["pad"])
    if op in ("max_pool", "avg_pool"):
        return kl.KerasPool2d(op.split("_")[0], spec["pool"], spec["strides"], spec["padding"])
    if op in ("global_avg_pool", "global_max_pool"):
        return kl.GlobalPool2d(op.split("_")[1])
    if op == "flatten":
        return kl.KerasFlatten(spec.get("order", "hwc"))
    if op == "dropout":
        return nn.Dropout(spec["rate"])
    if op == "add":
        return kl.Add()
    raise KerasImportError(f"layer {spec.get('keras_name')!r}: unknown op {op!r}")


class KerasGraph(nn.Module):
    """Runs a topologically ordered list of layer specs: one input tensor (named `source`) -> `output`."""

    def __init__(self, specs: list[dict[str, Any]], source: str, output: str) -> None:
        super().__init__()
        self.specs = specs
        self.source, self.output = source, output
        self.layers = nn.ModuleDict({spec["name"]: _build_layer(spec) for spec in specs})
        # position of each tensor's last reader, so that activations are freed as soon as possible
        # (a full-resolution ResNet50 forward would otherwise hold every intermediate map)
        self._last_use: dict[str, int] = {}
        for i, spec in enumerate(specs):
            for name in spec["inputs"]:
                self._last_use[name] = i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.specs:
            return x
        values: dict[str, torch.Tensor] = {self.source: x}
        for i, spec in enumerate(self.specs):
            y = self.layers[spec["name"]](*(values[name] for name in spec["inputs"]))
            act = spec.get("activation", "linear") if spec["op"] in ("conv2d", "dense") else "linear"
            values[spec["name"]] = kl.apply_activation(y, act)
            for name in spec["inputs"]:
                if self._last_use.get(name) == i and name != self.output:
                    values.pop(name, None)
        return values[self.output]


@register_model("keras_graph")
class KerasGraphNet(nn.Module):
    """A network imported from a Keras 2 file (see module docstring).

    Args:
        graph: the parsed graph of `models.keras_graph.parse_keras_config`.
        num_classes: output units (checked against the graph's output layer).
        in_chans: channels of the tensor the network is fed (1 = grayscale, replicated to the graph's 3).
        task: "whole" or "patch" (sets what stage 1 trains).
        pretrained: must be None (weights come from the imported file; the registry passes it).
    """

    def __init__(
        self,
        graph: dict[str, Any],
        num_classes: int,
        in_chans: int = 1,
        task: str = "whole",
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        if pretrained is not None:
            raise ValueError("keras_graph models take their weights from the imported file; pretrained must be None")
        self.graph = graph
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.task = task
        self.graph_channels = int(graph["input"]["channels"])
        if self.in_chans not in (1, self.graph_channels):
            raise ValueError(f"in_chans {in_chans}: the graph takes {self.graph_channels} channels (or 1, replicated)")
        specs = graph["layers"]
        out = {s["name"]: s for s in specs}[graph["output"]]
        if out["shape"] != [self.num_classes]:
            raise ValueError(f"the graph outputs {out['shape']} values, not num_classes={num_classes}")
        cut = graph.get("cut")
        if cut:
            at = next(i for i, s in enumerate(specs) if s["name"] == cut)
            self.trunk = KerasGraph(specs[: at + 1], INPUT, cut)
            self.top = KerasGraph(specs[at + 1 :], cut, graph["output"])
        else:
            self.trunk = KerasGraph(specs, INPUT, graph["output"])
            self.top = KerasGraph([], graph["output"], graph["output"])
        self.output_layer = graph["output"]

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        return {"graph": self.graph, "num_classes": self.num_classes, "in_chans": self.in_chans, "task": self.task}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 1 or 3, H, W) -> trunk output (the kept layer, e.g. res5c's ReLU: (B, 2048, H/32, W/32))."""
        if x.shape[1] == 1 and self.graph_channels == 3:
            x = x.expand(-1, 3, -1, -1)  # the original fed the grayscale image replicated to 3 channels
        return self.trunk(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Trunk output -> logits (B, num_classes)."""
        return self.top(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _names_under(self, part: nn.Module, prefix: str) -> list[str]:
        return [f"{prefix}.{n}" for n, _ in part.named_parameters()]

    def stage_parameter_names(self, stage: int) -> list[str]:
        """Whole: 1 = top layers (after the trunk), 2 = all. Patch: 1 = output layer, 2 = top, 3 = all."""
        everything = [n for n, _ in self.named_parameters()]
        out_layer = [n for n in everything if n.split(".")[2] == self.output_layer]
        top = self._names_under(self.top, "top") or out_layer
        plans = {"whole": {1: top, 2: everything}, "patch": {1: out_layer, 2: top, 3: everything}}
        plan = plans.get(self.task, plans["whole"])
        if stage not in plan:
            raise ValueError(f"{self.task} training of an imported model has stages {sorted(plan)}; got {stage}")
        return plan[stage]

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        wanted = set(self.stage_parameter_names(stage))
        return [p for n, p in self.named_parameters() if n in wanted]

    def regularised_parameters(self) -> list[nn.Parameter]:
        """Kernels of the top layers (the original put L2 on the new layers only)."""
        names = set(self.stage_parameter_names(1 if self.task == "whole" else 2))
        return [p for n, p in self.named_parameters() if n in names and p.ndim >= 2]


# ------------------------------------------------------------------------------------------ weight mapping
# Keras 1 weight names are "<layer>_<kind>" without a scope ("conv1_W:0", "bn_conv1_running_std:0"); Keras 2's
# legacy loader read them by position as kernel, bias, gamma, beta, moving_mean, moving_variance (Keras 1's
# "running_std" held the variance: its K.batch_normalization took it as var).
_KERAS1_KINDS = {"W": "kernel", "b": "bias", "gamma": "gamma", "beta": "beta", "running_mean": "moving_mean",
                 "running_std": "moving_variance"}  # fmt: skip
_KERAS1_NAME = re.compile(r"^(?P<scope>.+)_(?P<kind>W|b|gamma|beta|running_mean|running_std)(:\d+)?$")


def weight_scope_kind(w: StoredWeight) -> tuple[str, str]:
    """(layer scope, weight kind) of a stored tensor, for Keras 2/3 ("conv1/kernel:0") and Keras 1 ("conv1_W:0")."""
    if "/" not in w.name:
        m = _KERAS1_NAME.match(w.name)
        if m:
            return m.group("scope"), _KERAS1_KINDS[m.group("kind")]
    return w.scope, w.kind


def _match_layers(specs: list[dict[str, Any]], weights: list[StoredWeight]) -> dict[int, dict[str, Any]]:
    """Index of each stored tensor -> the layer spec it belongs to (by HDF5 group, then by name scope)."""
    with_weights = [s for s in specs if s["op"] in WEIGHT_KINDS]
    by_group: dict[str, list[dict[str, Any]]] = {}
    for spec in with_weights:
        by_group.setdefault(spec["group"], []).append(spec)
    owner: dict[int, dict[str, Any]] = {}
    for i, w in enumerate(weights):
        candidates = by_group.get(w.group, [])
        if not candidates:
            raise KerasImportError(
                f"stored weight {w.name!r} (group {w.group!r}) belongs to no layer with weights in the model config"
            )
        if len(candidates) == 1 and candidates[0]["keras_name"] == w.group:
            owner[i] = candidates[0]  # a plain layer: its group is the layer
            continue
        scope = weight_scope_kind(w)[0]
        exact = [s for s in candidates if s["keras_name"] == scope]
        if not exact:  # TensorFlow may have made the variable scope unique ("conv1_1" for layer "conv1")
            base = re.sub(r"_\d+$", "", scope)
            exact = [s for s in candidates if s["keras_name"] == base]
        if len(exact) != 1:
            raise KerasImportError(
                f"stored weight {w.name!r} in group {w.group!r} matches {len(exact)} layers of the model config "
                f"by name; expected exactly one"
            )
        owner[i] = exact[0]
    return owner


def _expected_shape(spec: dict[str, Any], kind: str) -> tuple[int, ...]:
    op = spec["op"]
    if op == "conv2d":
        if kind == "kernel" and spec.get("kernel_layout") == "OIHW":
            return (spec["filters"], spec["in_channels"], *spec["kernel"])
        if kind == "kernel":
            return (*spec["kernel"], spec["in_channels"], spec["filters"])
        return (spec["filters"],)
    if op == "dense":
        return (spec["in_features"], spec["units"]) if kind == "kernel" else (spec["units"],)
    return (spec["channels"],)


def _to_torch(spec: dict[str, Any], kind: str, value: np.ndarray) -> tuple[str, torch.Tensor]:
    """(parameter/buffer name in the module, tensor in PyTorch layout) for one stored tensor."""
    if spec["op"] == "conv2d" and kind == "kernel":
        if spec.get("kernel_layout") == "OIHW":
            value = np.transpose(value, (2, 3, 1, 0))  # Keras 1 channels_first -> Keras 2 HWIO (as Keras 2 did)
        if spec.get("flip_kernel"):
            value = value[::-1, ::-1].copy()  # Theano's true convolution -> cross-correlation (Keras' convert_kernel)
    t = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if spec["op"] == "conv2d":
        return ("weight", t.permute(3, 2, 0, 1).contiguous()) if kind == "kernel" else ("bias", t)  # HWIO -> OIHW
    if spec["op"] == "dense":
        return ("weight", t.t().contiguous()) if kind == "kernel" else ("bias", t)  # (in, out) -> (out, in)
    names = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
    return names[kind], t


@torch.no_grad()
def load_keras_weights(net: KerasGraphNet, weights: list[StoredWeight]) -> dict[str, int]:
    """Copy the stored tensors into `net`; every tensor must be used exactly once, every parameter filled.

    Returns:
        Counts: ``{"tensors": stored tensors used, "layers": layers with weights, "values": scalars copied}``.

    Raises:
        KerasImportError: naming the layer, for a tensor with no layer, a layer missing a tensor, a tensor
            used twice, an unexpected weight kind, or a shape that does not fit the config.
    """
    specs = net.graph["layers"]
    owner = _match_layers(specs, weights)
    modules: dict[str, nn.Module] = {**dict(net.trunk.layers.items()), **dict(net.top.layers.items())}
    seen: Counter[tuple[str, str]] = Counter()
    filled: set[int] = set()
    n_values = 0
    for i, w in enumerate(weights):
        spec = owner[i]
        label = f"layer {spec['keras_name']!r} ({spec['keras_class']})"
        expected_kinds = WEIGHT_KINDS[spec["op"]]
        if spec["op"] in ("conv2d", "dense") and not spec["use_bias"]:
            expected_kinds = ("kernel",)
        kind = weight_scope_kind(w)[1]
        if kind not in expected_kinds:
            raise KerasImportError(f"{label}: unexpected stored weight {w.name!r} (expected {expected_kinds})")
        seen[(spec["name"], kind)] += 1
        if seen[(spec["name"], kind)] > 1:
            raise KerasImportError(f"{label}: the file stores its {kind!r} more than once (second: {w.name!r})")
        want = _expected_shape(spec, kind)
        if tuple(w.value.shape) != want:
            raise KerasImportError(
                f"{label}: stored {kind} {w.name!r} has shape {tuple(w.value.shape)}, but the model config "
                f"needs {want}; the file's weights do not match its architecture"
            )
        attr, tensor = _to_torch(spec, kind, w.value)
        target = getattr(modules[spec["name"]], attr)
        target.copy_(tensor)
        filled.add(id(target))
        n_values += tensor.numel()
    for spec in specs:
        if spec["op"] not in WEIGHT_KINDS:
            continue
        kinds = WEIGHT_KINDS[spec["op"]]
        if spec["op"] in ("conv2d", "dense") and not spec["use_bias"]:
            kinds = ("kernel",)
        missing = [k for k in kinds if not seen[(spec["name"], k)]]
        if missing:
            raise KerasImportError(
                f"layer {spec['keras_name']!r} ({spec['keras_class']}): the file stores no {missing} for it; "
                "the file is incomplete or does not belong to this model config"
            )
    unfilled = [n for n, p in net.named_parameters() if id(p) not in filled]
    unfilled += [n for n, b in net.named_buffers() if id(b) not in filled and not n.endswith("num_batches_tracked")]
    if unfilled:
        raise KerasImportError(f"parameters not filled from the file: {unfilled[:5]} ({len(unfilled)} in all)")
    return {"tensors": len(weights), "layers": len({spec["name"] for spec in owner.values()}), "values": n_values}
