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

Besides Keras 2.0.x TensorFlow files, three other writers' configs are read (docs/keras-import.md):

* **Keras 1** (``Convolution2D`` with ``nb_filter``/``nb_row``/``nb_col``/``border_mode``/``subsample``,
  ``Merge(mode="sum")``, ``Dense(output_dim)``, ``Dropout(p)``, ``dim_ordering``): layer and argument names
  are mapped to Keras 2's by the table of Keras 2's own legacy interfaces (`_keras1_layer`);
* **Theano** files (root attribute ``backend="theano"``): conv kernels were trained for true convolution and
  are flipped 180 degrees when loaded (as Keras 2's loader did across backends); "same" padding is
  Theano's symmetric ``k // 2`` (odd kernels only); channels-first layouts are handled (below);
* **Keras 3** ``.h5`` files (``model.save("x.h5")``: ``"Functional"``, dict-style inbound nodes,
  ``batch_shape``): the config is rewritten into the Keras 2 form first (`_from_keras3`).

``channels_first`` models (``image_data_format`` of Theano users) run on the same NCHW network: conv and
pooling are unchanged, BatchNormalization must use axis 1, Flatten flattens in (C, H, W) order; Dense on a
feature map (the last axis would be the width) is refused.

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
_SPATIAL = ("conv2d", "max_pool", "avg_pool", "zero_pad", "global_avg_pool", "global_max_pool", "flatten")

# Default input sizes for a fully convolutional file that stores none (batch_input_shape [None, None, None, C]):
# the sizes the released networks were trained at (docs/keras-import.md, "Input size").
DEFAULT_WHOLE_SIZE = (1152, 896)
DEFAULT_PATCH_SIZE = (224, 224)

# Keras 1 -> Keras 2 (keras/legacy/interfaces.py of Keras 2.0, which converted old calls the same way)
_KERAS1_CLASSES = {"Convolution2D": "Conv2D", "AtrousConvolution2D": "Conv2D", "Merge": "Add"}
_KERAS1_ARGS = {
    "nb_filter": "filters",
    "subsample": "strides",
    "border_mode": "padding",
    "dim_ordering": "data_format",
    "bias": "use_bias",
    "output_dim": "units",
    "p": "rate",
    "atrous_rate": "dilation_rate",
}
_KERAS1_ORDERING = {"tf": "channels_last", "th": "channels_first", "default": None}
# Layer names the trunk of a flat whole-image file may end with: keras.applications 2.0.x ResNet50 / VGG16
# bodies (ResNet50 with include_top=False still ends in the 7x7 "avg_pool") and YaroslavNet's blocks.
_BODY_NAME = re.compile(r"^(conv1|bn_conv1|res\d+[a-z]_branch\w+|bn\d+[a-z]_branch\w+|avg_pool|block\d+_\w+)$")


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
    """Check the layer's data format is one the graph can run (which one the whole model uses: `_Flattener`)."""
    fmt = cfg.get("data_format") or "channels_last"
    if fmt not in ("channels_last", "channels_first"):
        raise KerasImportError(f"layer {layer!r}: data_format {fmt!r} is not supported (channels_last/first)")


def _keras1_layer(cls: str, cfg: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """A Keras 1 layer (class name, config) in Keras 2 terms; Keras 2 layers are returned unchanged.

    Keras 1 layers are recognised by their class name (Convolution2D, Merge) or their Keras 1 argument names,
    which Keras 2 never stores, so a Keras 2 config is never rewritten.
    """
    if cls not in _KERAS1_CLASSES and not any(k in cfg for k in (*_KERAS1_ARGS, "nb_row", "nb_col", "mode")):
        return cls, cfg
    if cls == "Merge":
        mode = cfg.get("mode")
        if mode != "sum":
            raise KerasImportError(
                f"layer {name!r}: Keras 1 Merge with mode {mode!r} is not supported (only mode='sum', i.e. Add)"
            )
        return "Add", {"name": cfg.get("name", name)}
    if cls == "BatchNormalization":
        mode = cfg.get("mode", 0)
        if mode != 0:
            # mode 1 normalises each sample, mode 2 uses batch statistics at test time: neither is a fixed affine
            raise KerasImportError(
                f"layer {name!r}: Keras 1 BatchNormalization mode={mode} is not supported (only mode 0, "
                "feature-wise with moving statistics)"
            )
    new = {}
    for key, value in cfg.items():
        if key in ("nb_row", "nb_col", "mode"):
            continue
        if key == "dim_ordering":
            if value not in _KERAS1_ORDERING:
                raise KerasImportError(f"layer {name!r}: Keras 1 dim_ordering {value!r} is not 'tf' or 'th'")
            value = _KERAS1_ORDERING[value]
        new[_KERAS1_ARGS.get(key, key)] = value
    if "nb_row" in cfg or "nb_col" in cfg:
        new["kernel_size"] = [cfg.get("nb_row"), cfg.get("nb_col")]
    if cls == "ZeroPadding2D" and isinstance(cfg.get("padding"), list | tuple) and len(cfg["padding"]) == 4:
        top, bottom, left, right = cfg["padding"]  # Keras 1's (top_pad, bottom_pad, left_pad, right_pad)
        new["padding"] = [[top, bottom], [left, right]]
    return _KERAS1_CLASSES.get(cls, cls), new


def _out_len(n: int, k: int, s: int, d: int, padding: str) -> int:
    """Keras/TensorFlow output length: 'same' = ceil(n/s), 'valid' = floor((n - d(k-1) - 1)/s) + 1."""
    if padding == "same":
        return math.ceil(n / s)
    return (n - d * (k - 1) - 1) // s + 1


def _layer_params(op: str, cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The op's parameters from a Keras layer config, validated."""
    if op == "conv2d":
        _channels_last(cfg, name)
        if int(cfg.get("groups", 1) or 1) != 1:
            raise KerasImportError(f"layer {name!r}: grouped convolution (groups={cfg['groups']}) is not supported")
        if "filters" not in cfg or "kernel_size" not in cfg:
            raise KerasImportError(f"layer {name!r}: the Conv2D config has no filters/kernel_size ({sorted(cfg)})")
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
        if cfg.get("renorm"):
            raise KerasImportError(f"layer {name!r}: BatchNormalization with renorm=True is not supported")
        return {"epsilon": float(cfg.get("epsilon", 1e-3)), "momentum": float(cfg.get("momentum", 0.99)), "axis": axis}
    if op == "activation":
        return {"activation": _activation(cfg, name)}
    if op == "zero_pad":
        _channels_last(cfg, name)
        pad = cfg.get("padding", 1)
        if isinstance(pad, int):
            t = b = l = r = pad  # noqa: E741
        elif isinstance(pad, list | tuple) and len(pad) == 4 and all(isinstance(p, int) for p in pad):
            t, b, l, r = (int(p) for p in pad)  # noqa: E741
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


def _keras_history(obj: Any, out: list[list[Any]]) -> None:
    """[layer, node, tensor] of every Keras 3 tensor reference (``__keras_tensor__``) inside a node's args."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            out.append(list((obj.get("config") or {}).get("keras_history") or []))
            return
        for value in obj.values():
            _keras_history(value, out)
    elif isinstance(obj, list | tuple):
        for value in obj:
            _keras_history(value, out)


def _triples(obj: Any) -> list[list[Any]]:
    """Keras 3 input_layers/output_layers (one [name, node, tensor] triple or a list of them) as a list."""
    if isinstance(obj, list) and len(obj) == 3 and isinstance(obj[0], str):
        return [obj]
    if isinstance(obj, list):
        return [t for item in obj for t in _triples(item)]
    return []


def is_keras3_config(model_config: dict[str, Any], keras_version: str | None = None) -> bool:
    """True for a config written by Keras 3 (its version, ``module``/``registered_name`` keys, dict-style nodes)."""
    if keras_version and str(keras_version).startswith("3"):
        return True
    if "module" in model_config or "registered_name" in model_config:
        return True
    layers = (model_config.get("config") or {}).get("layers") or []
    return any(isinstance(node, dict) for entry in layers for node in entry.get("inbound_nodes") or [])


def _from_keras3(model: dict[str, Any]) -> dict[str, Any]:
    """A Keras 3 functional config rewritten in the Keras 2 form `_Flattener` reads.

    Keras 3 stores each node as ``{"args": [...keras tensors...], "kwargs": {...}}`` with the source layer in
    ``keras_history``, the input shape as ``batch_shape``, single inputs/outputs as one triple, and a nested
    model as ``"Functional"``; the layer arguments themselves kept their Keras 2 names.
    """
    cfg = model.get("config") or {}
    layers = []
    for entry in cfg.get("layers") or []:
        cls = str(entry.get("class_name"))
        layer_cfg = dict(entry.get("config") or {})
        name = entry.get("name") or layer_cfg.get("name")
        if cls in _NESTED:
            layer_cfg = _from_keras3(entry)["config"]
        elif cls == "InputLayer" and "batch_input_shape" not in layer_cfg:
            layer_cfg["batch_input_shape"] = layer_cfg.get("batch_shape")
        nodes = []
        for node in entry.get("inbound_nodes") or []:
            if isinstance(node, dict):
                refs: list[list[Any]] = []
                _keras_history(node.get("args"), refs)
                nodes.append([[*ref[:3], {}] for ref in refs])
            else:
                nodes.append(node)
        layers.append({"name": name, "class_name": cls, "config": layer_cfg, "inbound_nodes": nodes})
    new = {"name": cfg.get("name"), "layers": layers, "input_layers": _triples(cfg.get("input_layers")),
           "output_layers": _triples(cfg.get("output_layers"))}  # fmt: skip
    return {"class_name": "Model", "config": new}


class _Flattener:
    """Inlines nested models into one list of layer specs with globally unique names."""

    def __init__(self) -> None:
        self.layers: list[dict[str, Any]] = []
        self.used: set[str] = {INPUT}
        self.nested: list[tuple[str, str]] = []  # (nested model name, its output layer)
        self.input_shape: list[Any] | None = None
        self.input_name = INPUT
        self.formats: dict[str, str] = {}  # layer name -> data_format of its spatial layers (one per model)

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
        keras1_channels_first = "nb_filter" in cfg and cfg.get("dim_ordering") == "th"
        cls, cfg = _keras1_layer(cls, cfg, name)
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
        if op in _SPATIAL and cfg.get("data_format"):
            # only where stored: Keras 2.0.x's Flatten stores none and follows the model's image_data_format
            self.formats[name] = cfg["data_format"]
        if keras1_channels_first:
            spec["kernel_layout"] = "OIHW"  # Keras 1 'th' kernels: (filters, in, rows, cols); Keras 2 made them HWIO
        self.layers.append(spec)
        return spec["name"]


def _infer_shapes(
    layers: list[dict[str, Any]],
    input_shape: list[int],
    data_format: str = "channels_last",
    backend: str = "tensorflow",
) -> None:
    """Set each spec's ``shape`` (and conv/dense/BN input sizes) from the image shape [H, W, C].

    Shapes are kept as [H, W, C] whatever the file's data format; `data_format` only decides what Flatten,
    Dense and BatchNormalization mean on a feature map, `backend` what "same" padding means.
    """
    first = data_format == "channels_first"
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
            if backend == "theano" and spec["padding"] == "same":
                if any(k % 2 == 0 for k in spec["kernel"]):
                    raise KerasImportError(
                        f"layer {name!r}: 'same' padding with an even kernel {spec['kernel']} in a Theano file "
                        "(Theano pads and crops it differently from TensorFlow); not supported"
                    )
                spec["same_mode"] = "symmetric"  # Theano's border_mode='half': k//2 on both sides, any stride
            h, w, c = x
            dims = [_out_len(n, k, s, d, spec["padding"]) for n, k, s, d in
                    zip((h, w), spec["kernel"], spec["strides"], spec["dilation"], strict=True)]  # fmt: skip
            spec["in_channels"] = c
            out = [*dims, spec["filters"]]
        elif op in ("max_pool", "avg_pool"):
            need_map()
            if backend == "theano" and spec["padding"] == "same":
                raise KerasImportError(
                    f"layer {name!r}: 'same' pooling in a Theano file (Theano pads, then crops, differently from "
                    "TensorFlow); not supported"
                )
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
            if first and spatial:
                raise KerasImportError(
                    f"layer {name!r}: Dense on a channels_first feature map acts on its width axis; not supported"
                )
            spec["in_features"] = x[-1]
            out = [*x[:-1], spec["units"]]
        elif op == "batch_norm":
            if spatial and (spec["axis"] == 1) != first:
                raise KerasImportError(
                    f"layer {name!r}: BatchNormalization axis={spec['axis']} is not the channel axis of a "
                    f"{data_format} feature map"
                )
            spec["channels"] = x[-1]
            out = list(x)
        elif op in ("global_avg_pool", "global_max_pool"):
            need_map()
            out = [x[2]]
        elif op == "flatten":
            if first and spatial:
                spec["order"] = "chw"  # channels_first flattens (C, H, W); Dense kernels follow that order
            out = [math.prod(x)]
        elif op == "add":
            if any(s != x for s in ins):
                raise KerasImportError(f"layer {name!r} (Add): input shapes {ins} differ")
            out = list(x)
        else:  # activation, dropout
            if first and spatial and spec.get("activation") == "softmax":
                raise KerasImportError(f"layer {name!r}: softmax over a channels_first feature map is not supported")
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


def _walk_to_cut(layers: list[dict[str, Any]], anchor: int, output: str) -> str | None:
    """The last clean cut from layer `anchor` on, over it and the Add/Activation layers right after it.

    A ResNet body's last named layer is res5c's BatchNormalization (``bn5c_branch2c``); its residual Add and
    ReLU (``activation_49``) follow and belong to the trunk, which is where the authors cut it.
    """
    best = None
    for i in range(anchor, len(layers)):
        spec = layers[i]
        if i > anchor and spec["op"] not in ("add", "activation"):
            break
        if spec["name"] != output and _clean_cut(layers, spec["name"], output):
            best = spec["name"]
    return best


def _find_cut(layers: list[dict[str, Any]], nested: list[tuple[str, str]], output: str) -> tuple[str | None, str]:
    """The trunk/top boundary and the rule that found it, in order of preference:

    1. ``nested``: the nested model's output (the whole-image files wrap the patch classifier's trunk in one);
    2. ``prt_``: the last layer named ``prt_*`` (the authors' older flat whole-image design renamed the patch
       classifier's layers so; everything after them is the top);
    3. ``body``: the last layer with a keras.applications ResNet50/VGG16 (or YaroslavNet block) name, then the
       residual Add/ReLU after it: flat files whose trunk kept its names (patch classifiers, flat whole models);
    4. ``pooling``: the map entering the first global pooling/Flatten (any other classifier).
    """
    rules: list[tuple[str, list[str]]] = [("nested", [inner for _, inner in nested])]
    prt = [i for i, spec in enumerate(layers) if spec["keras_name"].startswith("prt_")]
    if prt and not nested:
        rules.append(("prt_", [c for c in [_walk_to_cut(layers, prt[-1], output)] if c]))
    body = [i for i, spec in enumerate(layers) if _BODY_NAME.match(spec["keras_name"].removeprefix("prt_"))]
    if body and not nested:
        rules.append(("body", [c for c in [_walk_to_cut(layers, body[-1], output)] if c]))
    for spec in layers:
        if spec["op"] in _RANK_REDUCING:
            rules.append(("pooling", [spec["inputs"][0]]))
            break
    for rule, candidates in rules:
        for cut in candidates:
            if cut != output and cut != INPUT and _clean_cut(layers, cut, output):
                return cut, rule
    return None, "none"


def _fixed_size_layer(layers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first layer that ties the model to one input size (a Flatten of a feature map), or None."""
    shapes = {spec["name"]: spec["shape"] for spec in layers}
    for spec in layers:
        if spec["op"] == "flatten" and spec["inputs"][0] != INPUT and len(shapes[spec["inputs"][0]]) == 3:
            return spec
    return None


def parse_keras_config(
    model_config: dict[str, Any],
    input_size: tuple[int, int] | None = None,
    *,
    default_size: tuple[int, int] | None = None,
    backend: str = "tensorflow",
    keras_version: str | None = None,
) -> dict[str, Any]:
    """Parse a Keras functional model config into a flat graph spec (see module docstring).

    Args:
        model_config: the decoded ``model_config`` attribute of the file.
        input_size: (height, width) to use instead of the stored input size.
        default_size: (height, width) for a file that stores no input size (``batch_input_shape`` [None,
            None, None, C]) and is fully convolutional; None: such a file needs `input_size`. A file that
            stores no size and has a Flatten of a feature map always needs `input_size`.
        backend: the file's ``backend`` attribute ("tensorflow" or "theano"; Theano kernels are flipped and
            its "same" padding is symmetric).
        keras_version: the file's ``keras_version`` attribute (Keras 3 configs are rewritten first).

    Returns:
        ``{"input": {"height", "width", "channels", "size_source"}, "layers": [...], "output": name,
        "cut": name | None, "cut_rule": str, "output_activation": "softmax", "nested": [...], "backend": str,
        "data_format": str}``. The output layer's softmax is removed (the network returns logits; mammokit
        applies the softmax), and recorded in ``output_activation``. ``size_source`` says where the input
        size came from: "file", "--input-size" or "default".
    """
    backend = (backend or "tensorflow").lower()
    keras3 = is_keras3_config(model_config, keras_version)
    if keras3:
        backend = "tensorflow"  # Keras 3 stores the same (cross-correlation) kernels whichever backend saved them
    elif backend not in ("tensorflow", "theano"):
        raise KerasImportError(
            f"the file was saved with the {backend!r} backend; import-keras reads TensorFlow and Theano files. "
            "Load it in Keras with that backend and re-save it with the TensorFlow backend (model.save('x.h5'))"
        )
    if keras3:
        try:
            model_config = _from_keras3(model_config)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KerasImportError(
                f"the file was saved by Keras {keras_version or '3.x'} and its config could not be read ({exc}); "
                "re-save the model with Keras 2 / tf_keras as .h5"
            ) from None
    cls = model_config.get("class_name")
    if cls not in _NESTED:
        raise KerasImportError(
            f"the stored model is a {cls!r}; import-keras reads functional models (class_name 'Model'), "
            "which is how the released files were saved"
        )
    flat = _Flattener()
    output = flat.model(model_config.get("config") or {}, None, None, "")
    formats = set(flat.formats.values())
    if len(formats) > 1:
        example = {fmt: layer for layer, fmt in flat.formats.items()}  # one layer of each format
        listed = ", ".join(f"{layer!r} {fmt}" for fmt, layer in sorted(example.items()))
        raise KerasImportError(f"the model mixes data formats ({listed}); one data_format per model is supported")
    data_format = formats.pop() if formats else "channels_last"
    shape = flat.input_shape or []
    if len(shape) != 4:
        raise KerasImportError(f"the input layer's batch_input_shape {shape} is not (batch, height, width, channels)")
    if data_format == "channels_first":
        channels, height, width = shape[1], shape[2], shape[3]
    else:
        height, width, channels = shape[1], shape[2], shape[3]
    source = "file"
    if input_size is not None:
        height, width, source = int(input_size[0]), int(input_size[1]), "--input-size"
    elif height is None or width is None:
        if default_size is None:
            raise KerasImportError(
                f"the file stores no fixed input size (batch_input_shape {shape}); pass --input-size HxW with "
                "the size the model was trained at"
            )
        height, width, source = int(default_size[0]), int(default_size[1]), "default"
    if channels not in (1, 3):
        raise KerasImportError(f"the model expects {channels} input channels; only grayscale (1) or 3 are supported")
    layers = flat.layers
    _infer_shapes(layers, [int(height), int(width), int(channels)], data_format, backend)
    if source == "default":
        fixed = _fixed_size_layer(layers)
        if fixed is not None:
            raise KerasImportError(
                f"the file stores no fixed input size (batch_input_shape {shape}) and the model is not fully "
                f"convolutional: layer {fixed['keras_name']!r} (Flatten) ties it to the size it was trained at. "
                f"Pass --input-size HxW with that size ({DEFAULT_WHOLE_SIZE[0]}x{DEFAULT_WHOLE_SIZE[1]} for the "
                f"released whole-image models, {DEFAULT_PATCH_SIZE[0]}x{DEFAULT_PATCH_SIZE[1]} for the patch "
                "classifiers)"
            )
    for spec in layers:
        if backend == "theano" and spec["op"] == "conv2d":
            spec["flip_kernel"] = True  # trained for true convolution: rotate 180 degrees (Keras' convert_kernel)
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
    cut, rule = _find_cut(layers, flat.nested, output)
    return {
        "input": {"height": int(height), "width": int(width), "channels": int(channels), "size_source": source},
        "layers": layers,
        "output": output,
        "cut": cut,
        "cut_rule": rule,
        "output_activation": "softmax",
        "nested": [name for name, _ in flat.nested],
        "backend": backend,
        "data_format": data_format,
    }
