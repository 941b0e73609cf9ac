"""Keras 2 ``model_config`` JSON -> a flat, validated, JSON-able layer graph (no torch here).

`parse_keras_config` walks the stored Keras 2.0.x functional config (``{"class_name": "Model", "config":
{"layers": [...], "input_layers": ..., "output_layers": ...}}``), inlines nested ``Model`` layers (the
original whole-image networks wrap the patch model's trunk in one), orders the layers topologically and
infers every tensor's static shape (H, W, C) from the input size, so that each stored tensor's shape can
be checked and a clear error can name the layer that does not fit. The result is what `KerasGraphNet`
(`models.keras_net`) builds its modules from, and what `model.json` stores as ``arch_kwargs["graph"]``.

Supported layer classes: exactly those the released models use (InputLayer, Conv2D, BatchNormalization,
Activation, ZeroPadding2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D,
Flatten, Dropout, Dense, Add, nested Model). Anything else is refused with the layer's name.

Layer spec fields (all layers): ``name`` (unique, flattened), ``keras_name`` (name in the file), ``group``
(outer layer whose HDF5 group holds its weights), ``keras_class``, ``op``, ``inputs`` (names of the layers
feeding it; "input" for the image), ``shape`` (output shape, [H, W, C] or [N]). Per op: see `_OP_PARAMS`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from mammokit.io.keras_h5 import KerasImportError

INPUT = "input"  # name of the image tensor in a parsed graph

ACTIVATIONS = ("linear", "relu", "softmax", "sigmoid", "tanh")
# stored tensors each op needs, in Keras order (bias only when use_bias)
WEIGHT_KINDS = {
    "conv2d": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
    "batch_norm": ("gamma", "beta", "moving_mean", "moving_variance"),
}
_CLASS_TO_OP = {
    "Conv2D": "conv2d",
    "Convolution2D": "conv2d",
    "Dense": "dense",
    "BatchNormalization": "batch_norm",
    "Activation": "activation",
    "ZeroPadding2D": "zero_pad",
    "MaxPooling2D": "max_pool",
    "MaxPool2D": "max_pool",
    "AveragePooling2D": "avg_pool",
    "AvgPool2D": "avg_pool",
    "GlobalAveragePooling2D": "global_avg_pool",
    "GlobalMaxPooling2D": "global_max_pool",
    "Flatten": "flatten",
    "Dropout": "dropout",
    "Add": "add",
}
_NESTED = ("Model", "Functional")
_RANK_REDUCING = ("global_avg_pool", "global_max_pool", "flatten")


def _pair(value: Any, what: str, layer: str) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return [int(value[0]), int(value[1])]
    raise KerasImportError(f"layer {layer!r}: cannot read {what}={value!r} (expected an int or two ints)")


def _activation(cfg: dict[str, Any], layer: str) -> str:
    act = cfg.get("activation", "linear") or "linear"
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise KerasImportError(f"layer {layer!r}: activation {act!r} is not supported (supported: {ACTIVATIONS})")
    return act


def _channels_last(cfg: dict[str, Any], layer: str) -> None:
    fmt = cfg.get("data_format") or "channels_last"
    if fmt != "channels_last":
        raise KerasImportError(f"layer {layer!r}: data_format {fmt!r} is not supported (only channels_last)")


def _out_len(n: int, k: int, s: int, d: int, padding: str) -> int:
    """Keras/TensorFlow output length: 'same' = ceil(n/s), 'valid' = floor((n - d(k-1) - 1)/s) + 1."""
    if padding == "same":
        return math.ceil(n / s)
    return (n - d * (k - 1) - 1) // s + 1


def _layer_params(op: str, cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The op's parameters from a Keras layer config, validated."""
    if op == "conv2d":
        _channels_last(cfg, name)
        padding = cfg.get("padding", "valid")
        if padding not in ("same", "valid"):
            raise KerasImportError(f"layer {name!r}: padding {padding!r} is not supported (same or valid)")
        return {
            "filters": int(cfg["filters"]),
            "kernel": _pair(cfg["kernel_size"], "kernel_size", name),
            "strides": _pair(cfg.get("strides", 1), "strides", name),
            "dilation": _pair(cfg.get("dilation_rate", 1), "dilation_rate", name),
            "padding": padding,
            "use_bias": bool(cfg.get("use_bias", True)),
            "activation": _activation(cfg, name),
        }
    if op == "dense":
        return {
            "units": int(cfg["units"]),
            "use_bias": bool(cfg.get("use_bias", True)),
            "activation": _activation(cfg, name),
        }
    if op == "batch_norm":
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, 3, 1):
            raise KerasImportError(f"layer {name!r}: BatchNormalization axis={axis!r} is not the channel axis")
        if not cfg.get("center", True) or not cfg.get("scale", True):
            raise KerasImportError(f"layer {name!r}: BatchNormalization without center/scale is not supported")
        return {"epsilon": float(cfg.get("epsilon", 1e-3)), "momentum": float(cfg.get("momentum", 0.99)), "axis": axis}
    if op == "activation":
        return {"activation": _activation(cfg, name)}
    if op == "zero_pad":
        _channels_last(cfg, name)
        pad = cfg.get("padding", 1)
        if isinstance(pad, int):
            t = b = l = r = pad  # noqa: E741
        elif isinstance(pad, list | tuple) and len(pad) == 2 and all(isinstance(p, int) for p in pad):
            t = b = int(pad[0])
            l = r = int(pad[1])  # noqa: E741
        else:
            (t, b), (l, r) = (_pair(p, "padding", name) for p in pad)  # noqa: E741
        return {"pad": [t, b, l, r]}
    if op in ("max_pool", "avg_pool"):
        _channels_last(cfg, name)
        pool = _pair(cfg.get("pool_size", 2), "pool_size", name)
        strides = cfg.get("strides") or pool
        padding = cfg.get("padding", "valid")
        if padding not in ("same", "valid"):
            raise KerasImportError(f"layer {name!r}: padding {padding!r} is not supported (same or valid)")
        return {"pool": pool, "strides": _pair(strides, "strides", name), "padding": padding}
    if op == "dropout":
        return {"rate": float(cfg.get("rate", 0.0))}
    if op in ("global_avg_pool", "global_max_pool"):
        _channels_last(cfg, name)
    return {}


def _refs(entry: dict[str, Any], name: str) -> list[tuple[str, int]]:
    """(layer name, node index) of the tensors feeding a layer entry (Keras 2: [[[name, node, tensor, kw], ...]])."""
    nodes = entry.get("inbound_nodes") or []
    if not nodes:
        return []
    if len(nodes) > 1:
        raise KerasImportError(f"layer {name!r} is applied {len(nodes)} times (a shared layer); not supported")
    node = nodes[0]
    if isinstance(node, dict) or not isinstance(node, list):
        raise KerasImportError(
            f"layer {name!r}: inbound_nodes are not in the Keras 2 format ([[name, node, tensor, kwargs]]); "
            "files saved by Keras 3 are not supported"
        )
    refs = []
    for ref in node:
        if not isinstance(ref, list) or len(ref) < 3:
            raise KerasImportError(f"layer {name!r}: cannot read inbound node {ref!r}")
        if ref[2] != 0:
            raise KerasImportError(
                f"layer {name!r}: uses output {ref[2]} of {ref[0]!r}; multi-output layers unsupported"
            )
        refs.append((str(ref[0]), int(ref[1])))
    return refs


class _Flattener:
    """Inlines nested models into one list of layer specs with globally unique names."""

    def __init__(self) -> None:
        self.layers: list[dict[str, Any]] = []
        self.used: set[str] = {INPUT}
        self.nested: list[tuple[str, str]] = []  # (nested model name, its output layer)
        self.input_shape: list[Any] | None = None
        self.input_name = INPUT

    def unique(self, keras_name: str, prefix: str) -> str:
        base = re.sub(r"[^0-9A-Za-z_]", "_", keras_name) or "layer"
        name = base if base not in self.used else re.sub(r"[^0-9A-Za-z_]", "_", f"{prefix}__{keras_name}")
        i = 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def model(self, cfg: dict[str, Any], feeds: list[str] | None, group: str | None, prefix: str) -> str:
        """Add the layers of one (possibly nested) model; returns the flattened name of its output."""
        entries = cfg.get("layers")
        if not isinstance(entries, list):
            raise KerasImportError(f"model {cfg.get('name')!r}: config has no layer list")
        outputs = cfg.get("output_layers") or []
        if len(outputs) != 1:
            raise KerasImportError(f"model {cfg.get('name')!r} has {len(outputs)} outputs; exactly one is supported")
        inputs = cfg.get("input_layers") or []
        if len(inputs) != 1:
            raise KerasImportError(f"model {cfg.get('name')!r} has {len(inputs)} inputs; exactly one is supported")
        produced: dict[str, str] = {}  # keras layer name -> flattened name of its output tensor
        pending = list(entries)
        while pending:  # the stored order is topological; this also accepts any other order
            progress = False
            for entry in list(pending):
                name = str(entry.get("name") or entry.get("config", {}).get("name"))
                refs = _refs(entry, name)
                if any(r not in produced for r, _ in refs):
                    continue
                pending.remove(entry)
                progress = True
                srcs = [produced[r] for r, _ in refs]
                produced[name] = self.layer(entry, name, srcs, feeds, group, prefix)
            if not progress:
                names = [str(e.get("name")) for e in pending]
                raise KerasImportError(f"model {cfg.get('name')!r}: layers {names[:5]} have inputs that no layer makes")
        out = str(outputs[0][0])
        if out not in produced:
            raise KerasImportError(f"model {cfg.get('name')!r}: output layer {out!r} is not in the layer list")
        return produced[out]

    def layer(
        self, entry: dict[str, Any], name: str, srcs: list[str], feeds: list[str] | None, group: str | None, prefix: str
    ) -> str:
        cls = str(entry.get("class_name"))
        cfg = entry.get("config") or {}
        if cls == "InputLayer":
            if feeds is None:  # the outer model's image input
                if self.input_shape is not None:
                    raise KerasImportError("the model has more than one input layer; exactly one is supported")
                self.input_shape = list(cfg.get("batch_input_shape") or [])
                return INPUT
            if len(feeds) != 1:
                raise KerasImportError(f"nested input {name!r} is fed by {len(feeds)} tensors; expected one")
            return feeds[0]
        if cls in _NESTED:
            inner = self.model(cfg, srcs, group or name, name)
            self.nested.append((name, inner))
            return inner
        op = _CLASS_TO_OP.get(cls)
        if op is None:
            raise KerasImportError(
                f"layer {name!r} has type {cls!r}, which import-keras does not support "
                f"(supported: {sorted(set(_CLASS_TO_OP))} and nested Model)"
            )
        if op == "add" and len(srcs) < 2:
            raise KerasImportError(f"layer {name!r} (Add) has {len(srcs)} input(s); expected at least two")
        if op != "add" and len(srcs) != 1:
            raise KerasImportError(f"layer {name!r} ({cls}) has {len(srcs)} inputs; expected one")
        spec = {
            "name": self.unique(name, prefix),
            "keras_name": name,
            "group": group or name,
            "keras_class": cls,
            "op": op,
            "inputs": srcs,
            **_layer_params(op, cfg, name),
        }
        self.layers.append(spec)
        return spec["name"]


def _infer_shapes(layers: list[dict[str, Any]], input_shape: list[int]) -> None:
    """Set each spec's ``shape`` (and conv/dense/BN input sizes) from the image shape [H, W, C]."""
    shapes: dict[str, list[int]] = {INPUT: list(input_shape)}
    for spec in layers:
        name, op = spec["keras_name"], spec["op"]
        ins = [shapes[s] for s in spec["inputs"]]
        x = ins[0]
        spatial = len(x) == 3

        def need_map(x: list[int] = x, name: str = name, cls: str = spec["keras_class"]) -> None:
            if len(x) != 3:
                raise KerasImportError(f"layer {name!r} ({cls}) needs a feature map, got shape {x}")

        if op == "conv2d":
            need_map()
            h, w, c = x
            dims = [_out_len(n, k, s, d, spec["padding"]) for n, k, s, d in
                    zip((h, w), spec["kernel"], spec["strides"], spec["dilation"], strict=True)]  # fmt: skip
            spec["in_channels"] = c
            out = [*dims, spec["filters"]]
        elif op in ("max_pool", "avg_pool"):
            need_map()
            h, w, c = x
            dims = [
                _out_len(n, k, s, 1, spec["padding"])
                for n, k, s in zip((h, w), spec["pool"], spec["strides"], strict=True)
            ]
            out = [*dims, c]
        elif op == "zero_pad":
            need_map()
            t, b, l, r = spec["pad"]  # noqa: E741
            out = [x[0] + t + b, x[1] + l + r, x[2]]
        elif op == "dense":
            spec["in_features"] = x[-1]
            out = [*x[:-1], spec["units"]]
        elif op == "batch_norm":
            if spatial and spec["axis"] == 1:
                raise KerasImportError(f"layer {name!r}: BatchNormalization axis=1 on a feature map is channels_first")
            spec["channels"] = x[-1]
            out = list(x)
        elif op in ("global_avg_pool", "global_max_pool"):
            need_map()
            out = [x[2]]
        elif op == "flatten":
            out = [math.prod(x)]
        elif op == "add":
            if any(s != x for s in ins):
                raise KerasImportError(f"layer {name!r} (Add): input shapes {ins} differ")
            out = list(x)
        else:  # activation, dropout
            out = list(x)
        if any(n < 1 for n in out):
            raise KerasImportError(
                f"layer {name!r} ({spec['keras_class']}): input shape {x} is too small (output {out}); "
                "use a larger --input-size"
            )
        spec["shape"] = out
        shapes[spec["name"]] = out


def _clean_cut(layers: list[dict[str, Any]], cut: str, output: str) -> bool:
    """True if every layer after `cut` reads only `cut` or later layers (one tensor crosses the boundary)."""
    order = {spec["name"]: i for i, spec in enumerate(layers)}
    if cut not in order:
        return False
    downstream = {cut}
    for spec in layers[order[cut] + 1 :]:
        if any(s in downstream for s in spec["inputs"]):
            downstream.add(spec["name"])
    if output not in downstream:
        return False
    for spec in layers[order[cut] + 1 :]:
        if spec["name"] not in downstream:
            return False  # a layer after the cut that does not follow from it: the cut is not a clean boundary
        if any(s != cut and s not in downstream for s in spec["inputs"]):
            return False  # a top layer that also reads a trunk tensor (a shortcut across the boundary)
    return True


def _find_cut(layers: list[dict[str, Any]], nested: list[tuple[str, str]], output: str) -> str | None:
    """The trunk/top boundary: a nested model's output (whole-image files) or the map before global pooling."""
    candidates = [inner for _, inner in nested]
    if not candidates:
        for spec in layers:
            if spec["op"] in _RANK_REDUCING:
                candidates = [spec["inputs"][0]]
                break
    for cut in candidates:
        if cut != output and cut != INPUT and _clean_cut(layers, cut, output):
            return cut
    return None


def parse_keras_config(model_config: dict[str, Any], input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Parse a Keras 2 functional model config into a flat graph spec (see module docstring).

    Args:
        model_config: the decoded ``model_config`` attribute of the file.
        input_size: (height, width) to use instead of the stored input size (required when the file stores
            none, e.g. a fully convolutional patch model saved with ``input_shape=(None, None, 3)``).

    Returns:
        ``{"input": {"height", "width", "channels"}, "layers": [...], "output": name, "cut": name | None,
        "output_activation": "softmax", "nested": [...]}``. The output layer's softmax is removed (the
        network returns logits; mammokit applies the softmax), and recorded in ``output_activation``.
    """
    cls = model_config.get("class_name")
    if cls not in _NESTED:
        raise KerasImportError(
            f"the stored model is a {cls!r}; import-keras reads functional models (class_name 'Model'), "
            "which is how the released files were saved"
        )
    flat = _Flattener()
    output = flat.model(model_config.get("config") or {}, None, None, "")
    shape = flat.input_shape or []
    if len(shape) != 4:
        raise KerasImportError(f"the input layer's batch_input_shape {shape} is not (batch, height, width, channels)")
    height, width, channels = shape[1], shape[2], shape[3]
    if input_size is not None:
        height, width = int(input_size[0]), int(input_size[1])
    if height is None or width is None:
        raise KerasImportError("the file stores no fixed input size (None); pass --input-size HxW")
    if channels not in (1, 3):
        raise KerasImportError(f"the model expects {channels} input channels; only grayscale (1) or 3 are supported")
    layers = flat.layers
    _infer_shapes(layers, [int(height), int(width), int(channels)])
    by_name = {spec["name"]: spec for spec in layers}
    if output == INPUT or output not in by_name:
        raise KerasImportError("the model's output is its input; nothing to import")
    out_spec = by_name[output]
    act = out_spec.get("activation")
    if out_spec["op"] not in ("dense", "activation") or act != "softmax":
        raise KerasImportError(
            f"the output layer {out_spec['keras_name']!r} ({out_spec['keras_class']}, activation {act!r}) is not a "
            "softmax classifier; mammokit needs class probabilities from a softmax"
        )
    if len(out_spec["shape"]) != 1:
        raise KerasImportError(
            f"the output layer {out_spec['keras_name']!r} gives shape {out_spec['shape']}, not a vector"
        )
    out_spec["activation"] = "linear"  # logits; softmax(logits) == the Keras output
    return {
        "input": {"height": int(height), "width": int(width), "channels": int(channels)},
        "layers": layers,
        "output": output,
        "cut": _find_cut(layers, flat.nested, output),
        "output_activation": "softmax",
        "nested": [name for name, _ in flat.nested],
    }
