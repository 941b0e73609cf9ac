"""Test-only: the original architectures in Keras 3 (torch backend) as the reference implementation, saved in the
Keras **2.0.8** HDF5 layout that the released files have.

Keras 3's own ``.h5`` writer stores a Keras-3 config (``"Functional"``, dict-style inbound nodes, ``batch_shape``)
and weight paths without ``:0``, so this module writes the Keras 2.0.8 layout itself with h5py, from the Keras 3
model's layers and weights:

* root attrs ``keras_version = "2.0.8"``, ``backend = "tensorflow"``, ``model_config`` = a Keras 2 functional
  config (``class_name "Model"``, ``inbound_nodes [[[name, node, tensor, {}]]]``, ``batch_input_shape``), with
  a nested ``Model`` layer for the whole-image networks' trunk (referenced at node index 1, as Keras 2 does);
* group ``model_weights`` with ``layer_names``; one group per layer with ``weight_names`` ("conv1/kernel:0", ...);
  a nested model's group lists all trainable weights of its layers first, then the non-trainable ones
  (BatchNorm moving statistics), which is Keras 2's ``Container.weights`` order.

Layer names follow keras.applications 2.0.8 (``conv1``, ``bn_conv1``, ``res2a_branch2a``, ``activation_49``,
``block1_conv1``, ...). Weights are random, BatchNorm moving statistics too, so that a wrong mapping shows.

Variants that real files have and the default layout does not (each pinned by a test of test_keras_import.py):

* per-model name counters (``Names`` per model: the inner and the outer model both have ``input_1``,
  ``activation_1`` ...; the builders' ``names`` argument);
* weight scopes with TensorFlow's uniquifying suffix (``dense_1_1/kernel:0`` in group ``dense_1``;
  ``save_keras2_h5(scope_suffix="_1")``);
* keras.applications 2.0.7+ ResNet50 stem (``resnet50_trunk(stem="same")``: a "same" 7x7 conv1, no padding layer);
* frozen inner layers (``save_keras2_h5(frozen=...)``: their weights move after all trainable ones in the
  nested model's weight_names, Keras 2's ``Container.weights`` order);
* auto-named YaroslavNet BatchNormalization layers (``yaroslav_trunk(bn_names="auto")``: ``batch_normalization_N``);
* the authors' older flat whole-image design (`flat_whole_model`: patch layers renamed ``prt_*``, no nested
  model, no stored input size);
* Keras 1 configs and weight names (``save_keras2_h5(keras1=True)``: ``Convolution2D``, ``nb_filter``,
  ``Merge(mode="sum")``, ``conv1_W:0``, ``running_std``);
* Theano files (``save_keras2_h5(theano=True)``: ``backend="theano"``, channels_first configs, conv kernels
  rotated 180 degrees for true convolution, Dense-after-Flatten rows in (C, H, W) order).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")


def keras():
    import keras as k

    if k.backend.backend() != "torch":  # pragma: no cover - depends on the environment
        raise RuntimeError("these tests need KERAS_BACKEND=torch")
    return k


class Names:
    """Keras 2 auto names: activation_1, add_1, ... (one counter per kind, as Keras 2.0.8's session did).

    `prefix` is put before every name, auto or explicit (`p`): the flat design's renamed patch layers (``prt_``).
    """

    def __init__(self, prefix: str = "") -> None:
        self.count: Counter[str] = Counter()
        self.prefix = prefix

    def __call__(self, kind: str) -> str:
        self.count[kind] += 1
        return f"{self.prefix}{kind}_{self.count[kind]}"

    def p(self, name: str) -> str:
        """An explicit (keras.applications) layer name, with the prefix."""
        return f"{self.prefix}{name}"


# ------------------------------------------------------------------------------------------------ builders
def resnet50_trunk(x, names: Names, stem: str = "pad"):
    """keras.applications.ResNet50 up to res5c's ReLU (activation_49).

    stem: "pad" = 2.0.0-2.0.6 and 2.2+ (ZeroPadding2D(3) then a "valid" 7x7/2 conv1); "same" = 2.0.7-2.1.x (a
    "same" 7x7/2 conv1, no padding layer: TensorFlow pads it asymmetrically).
    """
    L = keras().layers

    def conv_bn(x, filters, k, stage, block, branch, strides=1, padding="valid", relu=True):
        x = L.Conv2D(filters, k, strides=strides, padding=padding, name=names.p(f"res{stage}{block}_branch{branch}"))(x)
        x = L.BatchNormalization(axis=3, name=names.p(f"bn{stage}{block}_branch{branch}"))(x)
        return L.Activation("relu", name=names("activation"))(x) if relu else x

    def unit(x, filters, stage, block, strides=None):
        f1, f2, f3 = filters
        y = conv_bn(x, f1, 1, stage, block, "2a", strides=strides or 1)
        y = conv_bn(y, f2, 3, stage, block, "2b", padding="same")
        y = conv_bn(y, f3, 1, stage, block, "2c", relu=False)
        shortcut = x if strides is None else conv_bn(x, f3, 1, stage, block, "1", strides=strides, relu=False)
        y = L.Add(name=names("add"))([y, shortcut])
        return L.Activation("relu", name=names("activation"))(y)

    if stem == "same":
        x = L.Conv2D(64, 7, strides=2, padding="same", name=names.p("conv1"))(x)
    else:
        x = L.ZeroPadding2D((3, 3), name=names("zero_padding2d"))(x)
        x = L.Conv2D(64, 7, strides=2, name=names.p("conv1"))(x)
    x = L.BatchNormalization(axis=3, name=names.p("bn_conv1"))(x)
    x = L.Activation("relu", name=names("activation"))(x)
    x = L.MaxPooling2D(3, strides=2, name=names("max_pooling2d"))(x)
    for stage, (n, f, s) in enumerate(
        [(3, [64, 64, 256], 1), (4, [128, 128, 512], 2), (6, [256, 256, 1024], 2), (3, [512, 512, 2048], 2)], start=2
    ):
        for i in range(n):
            x = unit(x, f, stage, "abcdef"[i], strides=s if i == 0 else None)
    return x


def vgg16_trunk(x, names: Names):
    """keras.applications.VGG16 (2.0.8) up to block5_pool."""
    L = keras().layers
    for b, (n, f) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
        for i in range(1, n + 1):
            x = L.Conv2D(f, 3, padding="same", activation="relu", name=names.p(f"block{b}_conv{i}"))(x)
        x = L.MaxPooling2D(2, strides=2, name=names.p(f"block{b}_pool"))(x)
    return x


def yaroslav_trunk(x, names: Names, bn_names: str = "explicit"):
    """YaroslavNet: six blocks of [Conv3x3 same -> BN -> ReLU] x2 -> MaxPool 2x2 (32..512 filters), stride 64.

    bn_names: "explicit" (``block1_bn1``) or "auto" (Keras' ``batch_normalization_N``, as an unnamed layer gets).
    """
    L = keras().layers
    for b, f in enumerate([32, 64, 128, 256, 256, 512], start=1):
        for i in (1, 2):
            x = L.Conv2D(f, 3, padding="same", name=names.p(f"block{b}_conv{i}"))(x)
            bn = names("batch_normalization") if bn_names == "auto" else names.p(f"block{b}_bn{i}")
            x = L.BatchNormalization(name=bn)(x)
            x = L.Activation("relu", name=names("activation"))(x)
        x = L.MaxPooling2D(2, name=names.p(f"block{b}_pool"))(x)
    return x


def resnet_top(x, names: Names, depths=(512, 512), reps=(2, 2), enlarge=2, drop=0.0):
    """The "[512-512-1024]x2" top: per block, post-activation bottleneck units (first unit stride 2)."""
    L = keras().layers

    def cbr(x, f, k, strides=1, relu=True, padding="same"):
        x = L.Conv2D(f, k, strides=strides, padding=padding, name=names("conv2d"))(x)
        x = L.BatchNormalization(name=names("batch_normalization"))(x)
        if relu:
            x = L.Activation("relu", name=names("activation"))(x)
            x = L.Dropout(drop, name=names("dropout"))(x)
        return x

    for d, r in zip(depths, reps, strict=True):
        for u in range(r):
            s = 2 if u == 0 else 1
            y = cbr(x, d, 1, strides=s)
            y = cbr(y, d, 3)
            y = cbr(y, d * enlarge, 1, relu=False)
            shortcut = cbr(x, d * enlarge, 1, strides=2, relu=False, padding="valid") if u == 0 else x
            x = L.Add(name=names("add"))([y, shortcut])
            x = L.Activation("relu", name=names("activation"))(x)
    return x


def vgg_top(x, names: Names, depths=(512, 512)):
    """The "512x1" top: per block Conv3x3 -> BN -> ReLU -> MaxPool 2x2."""
    L = keras().layers
    for d in depths:
        x = L.Conv2D(d, 3, padding="same", name=names("conv2d"))(x)
        x = L.BatchNormalization(name=names("batch_normalization"))(x)
        x = L.Activation("relu", name=names("activation"))(x)
        x = L.MaxPooling2D(2, name=names("max_pooling2d"))(x)
    return x


def _trunk(trunk: str, x, names: Names, **kwargs):
    return {"resnet50": resnet50_trunk, "vgg16": vgg16_trunk, "yaroslav": yaroslav_trunk}[trunk](x, names, **kwargs)


def whole_model(trunk: str, top: str, size: tuple[int, int], *, per_model_names: bool = False, **trunk_kwargs):
    """Input -> nested trunk Model (as the original's patch->whole conversion) -> top -> GAP -> Dropout -> Dense(2).

    per_model_names: the inner and the outer model count names separately (both have ``input_1``,
    ``activation_1`` ...), as in files whose patch model was built in another session. `trunk_kwargs` go to the
    trunk builder (``stem=``, ``bn_names=``).
    """
    k = keras()
    L = k.layers
    names = Names()
    channels = 1 if trunk == "yaroslav" else 3
    tin = k.Input((*size, channels), name=names("input"))
    tout = _trunk(trunk, tin, names, **trunk_kwargs)
    trunk_model = k.Model(tin, tout, name=names("model"))
    if per_model_names:
        names = Names()
    inp = k.Input((*size, channels), name=names("input"))
    x = trunk_model(inp)
    if top == "heatmap_fc":  # YaroslavNet: heatmap -> max-pool -> FC16 -> FC8 (+ shortcut) -> softmax
        x = L.AveragePooling2D(3, strides=1, name=names("average_pooling2d"))(x)
        heat = L.Dense(5, activation="relu", name=names("dense"))(x)
        heat = L.MaxPooling2D(5, name=names("max_pooling2d"))(heat)
        flat = L.Flatten(name=names("flatten"))(heat)
        y = flat
        for units in (16, 8):
            y = L.Dense(units, name=names("dense"))(y)
            y = L.BatchNormalization(name=names("batch_normalization"))(y)
            y = L.Activation("relu", name=names("activation"))(y)
        logits = L.Add(name=names("add"))([L.Dense(2, name=names("dense"))(y), L.Dense(2, name=names("dense"))(flat)])
        out = L.Activation("softmax", name=names("activation"))(logits)
        return k.Model(inp, out, name=names("model"))
    x = resnet_top(x, names) if top == "resnet" else vgg_top(x, names)
    x = L.GlobalAveragePooling2D(name=names("global_average_pooling2d"))(x)
    x = L.Dropout(0.5, name=names("dropout"))(x)
    out = L.Dense(2, activation="softmax", name=names("dense"))(x)
    return k.Model(inp, out, name=names("model"))


def _continue(names: Names) -> Names:
    """Auto names for layers added after the patch layers in the same session: the counters go on, no prefix."""
    top = Names()
    top.count = names.count
    return top


def flat_whole_model(
    trunk: str, top: str, size: tuple[int | None, int | None] = (None, None), prefix: str = "prt_", **trunk_kwargs
):
    """The authors' older flat whole-image design: the patch classifier's layers (renamed `prefix` + name) and the
    top layers in one model, no nested model, input size as stored (None x None: a fully convolutional file).

    top: "resnet", "vgg" (-> GAP -> Dropout -> Dense(2, softmax)) or "flatten" (a 1x1 conv -> Flatten ->
    Dense(2, softmax): fixed to one input size).
    """
    k = keras()
    L = k.layers
    names = Names(prefix)
    channels = 1 if trunk == "yaroslav" else 3
    inp = k.Input((*size, channels), name=names("input"))
    x = _trunk(trunk, inp, names, **trunk_kwargs)
    names = _continue(names)
    if top == "flatten":
        x = L.Conv2D(2, 1, name=names("conv2d"))(x)
        x = L.Flatten(name=names("flatten"))(x)
    else:
        x = resnet_top(x, names) if top == "resnet" else vgg_top(x, names, depths=(16,))
        x = L.GlobalAveragePooling2D(name=names("global_average_pooling2d"))(x)
        x = L.Dropout(0.5, name=names("dropout"))(x)
    out = L.Dense(2, activation="softmax", name=names("dense"))(x)
    return k.Model(inp, out, name=names("model"))


def flat_small_model(size: tuple[int | None, int | None] = (None, None), prefix: str = "prt_", top: str = "gap"):
    """A small flat whole-image network (`flat_whole_model`'s design at a size a test can run at 1152x896):
    prt_ stem conv -> prt_ ResNet unit -> top conv/BN/ReLU -> GAP (or Flatten) -> Dense(2, softmax)."""
    k = keras()
    L = k.layers
    names = Names(prefix)
    inp = k.Input((*size, 3), name=names("input"))
    x = L.Conv2D(4, 7, strides=4, padding="same", name=names.p("conv1"))(inp)
    x = L.BatchNormalization(name=names.p("bn_conv1"))(x)
    x = L.Activation("relu", name=names("activation"))(x)
    y = L.Conv2D(4, 3, padding="same", name=names.p("res2a_branch2b"))(x)
    y = L.BatchNormalization(name=names.p("bn2a_branch2b"))(y)
    x = L.Add(name=names("add"))([x, y])
    x = L.Activation("relu", name=names("activation"))(x)
    names = _continue(names)
    x = L.Conv2D(6, 3, strides=2, padding="same", name=names("conv2d"))(x)
    x = L.BatchNormalization(name=names("batch_normalization"))(x)
    x = L.Activation("relu", name=names("activation"))(x)
    x = L.Flatten(name=names("flatten"))(x) if top == "flatten" else L.GlobalMaxPooling2D(name=names("gmp"))(x)
    out = L.Dense(2, activation="softmax", name=names("dense"))(x)
    return k.Model(inp, out, name=names("model"))


def channels_first_model(size: tuple[int, int] = (35, 33)):
    """Layers whose channels_first / Theano form differs from the TensorFlow one: conv kernels (flipped by Theano),
    a stride-2 "same" conv (odd sizes: symmetric in both backends), BatchNormalization on the channel axis,
    Add, Flatten -> Dense (rows in (C, H, W) order when channels_first), inside a nested trunk."""
    k = keras()
    L = k.layers
    names = Names()
    tin = k.Input((*size, 3), name=names("input"))
    x = L.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="conv1")(tin)
    x = L.BatchNormalization(axis=3, name="bn_conv1")(x)
    y = L.Conv2D(6, (3, 2), padding="valid", name="res2a_branch2a")(x)
    y = L.ZeroPadding2D(((1, 1), (0, 1)), name=names("zero_padding2d"))(y)
    x = L.Add(name=names("add"))([x, y])
    x = L.Activation("relu", name=names("activation"))(x)
    trunk = k.Model(tin, x, name=names("model"))
    inp = k.Input((*size, 3), name=names("input"))
    x = L.Conv2D(5, 1, name=names("conv2d"))(trunk(inp))
    x = L.MaxPooling2D(2, name=names("max_pooling2d"))(x)
    x = L.Flatten(name=names("flatten"))(x)
    x = L.Dense(4, activation="relu", name=names("dense"))(x)
    x = L.BatchNormalization(name=names("batch_normalization"))(x)
    out = L.Dense(2, activation="softmax", name=names("dense"))(x)
    return k.Model(inp, out, name=names("model"))


def patch_model(trunk: str, size: tuple[int, int], n_classes: int = 5):
    """A flat patch classifier: trunk -> [ResNet50's 7x7 avg_pool] -> GAP -> Dropout -> Dense(n, softmax)."""
    k = keras()
    L = k.layers
    names = Names()
    inp = k.Input((*size, 3), name=names("input"))
    x = _trunk(trunk, inp, names)
    if trunk == "resnet50":
        x = L.AveragePooling2D(7, name="avg_pool")(x)
    x = L.GlobalAveragePooling2D(name=names("global_average_pooling2d"))(x)
    x = L.Dropout(0.5, name=names("dropout"))(x)
    out = L.Dense(n_classes, activation="softmax", name=names("dense"))(x)
    return k.Model(inp, out, name=names("model"))


def small_whole_model(size: tuple[int, int] = (64, 64)):
    """A small whole-image network of the same shape as the released ones, for the CLI and malformed-file tests:
    nested trunk (ResNet-like stem with a stride-2 "same" conv) -> one "[8-8-16]x1" unit -> GAP -> Dense(2)."""
    k = keras()
    L = k.layers
    names = Names()
    tin = k.Input((*size, 3), name=names("input"))
    x = L.ZeroPadding2D((3, 3), name=names("zero_padding2d"))(tin)
    x = L.Conv2D(8, 7, strides=2, name="conv1")(x)
    x = L.BatchNormalization(axis=3, name="bn_conv1")(x)
    x = L.Activation("relu", name=names("activation"))(x)
    x = L.MaxPooling2D(3, strides=2, name=names("max_pooling2d"))(x)
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="res2a_branch2b")(x)
    trunk = k.Model(tin, x, name=names("model"))
    inp = k.Input((*size, 3), name=names("input"))
    x = resnet_top(trunk(inp), names, depths=(8,), reps=(1,), enlarge=2)
    x = L.GlobalAveragePooling2D(name=names("global_average_pooling2d"))(x)
    x = L.Dropout(0.5, name=names("dropout"))(x)
    out = L.Dense(2, activation="softmax", name=names("dense"))(x)
    return k.Model(inp, out, name=names("model"))


def padding_model():
    """Layers whose TensorFlow "same" padding is asymmetric, on any input size (stored size None x None)."""
    k = keras()
    L = k.layers
    inp = k.Input((None, None, 3), name="input_1")
    x = L.ZeroPadding2D(((1, 2), (0, 1)), name="zero_padding2d_1")(inp)
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv_s2")(x)
    a = L.MaxPooling2D(3, strides=2, padding="same", name="max_s2")(x)
    # (AveragePooling2D 3x3/2 "same" is tested against a NumPy reference instead: Keras 3's torch backend pads
    # asymmetric pooling by edge replication, which differs from TensorFlow's average over the real cells)
    b = L.Conv2D(8, 1, strides=2, padding="same", name="conv_1x1_s2")(x)
    x = L.Add(name="add_1")([a, b])
    x = L.AveragePooling2D(2, strides=1, padding="same", name="avg_s1_even")(x)
    x = L.Conv2D(4, 4, strides=1, padding="same", name="conv_even")(x)
    x = L.GlobalMaxPooling2D(name="global_max_pooling2d_1")(x)
    out = L.Dense(3, activation="softmax", name="dense_1")(x)
    return k.Model(inp, out, name="model_1")


# ------------------------------------------------------------------------------------------------ weights
def randomise(model, seed: int = 0) -> None:
    """Random weights and BatchNorm statistics (He-scaled kernels so activations stay O(1) through ResNet50)."""
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        for v in layer.weights:
            shape, kind = tuple(v.shape), v.name.split("/")[-1]
            if kind == "kernel":
                fan_in = int(np.prod(shape[:-1]))
                value = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
            elif kind == "moving_variance":
                value = rng.uniform(0.5, 2.0, shape)
            elif kind == "gamma":
                value = rng.uniform(0.5, 1.5, shape)
            else:  # bias, beta, moving_mean
                value = rng.normal(0.0, 0.1, shape)
            v.assign(value.astype("float32"))


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
        else:
            yield layer


# ------------------------------------------------------------------------------------------------ Keras 2 layout
_DROP_KEYS = {"dtype", "kernel_initializer", "bias_initializer", "kernel_regularizer", "bias_regularizer",
              "activity_regularizer", "kernel_constraint", "bias_constraint", "beta_initializer", "gamma_initializer",
              "moving_mean_initializer", "moving_variance_initializer", "beta_regularizer", "gamma_regularizer",
              "beta_constraint", "gamma_constraint", "synchronized", "groups", "lora_rank", "lora_alpha",
              "quantization_config"}  # fmt: skip


def _history(obj: Any, out: list[str]) -> None:
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            out.append(obj["config"]["keras_history"][0])
            return
        for v in obj.values():
            _history(v, out)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _history(v, out)


def keras2_config(model) -> dict[str, Any]:
    """The Keras 2.0.8 functional config of a Keras 3 functional model (nested models included)."""
    cfg3 = model.get_config()
    nested = {layer.name for layer in model.layers if hasattr(layer, "layers")}
    layers = []
    for entry, layer in zip(cfg3["layers"], model.layers, strict=True):
        name = layer.name
        if name in nested:
            k2 = keras2_config(layer)
            cls, config = "Model", k2["config"]
        elif layer.__class__.__name__ == "InputLayer":
            cls = "InputLayer"
            config = {"batch_input_shape": list(entry["config"]["batch_shape"]), "dtype": "float32",
                      "sparse": False, "name": name}  # fmt: skip
        else:
            cls = layer.__class__.__name__
            config = {k: v for k, v in layer.get_config().items() if k not in _DROP_KEYS}
            config["trainable"] = True
            if cls == "Flatten":
                config.pop("data_format", None)  # Keras 2.0.x's Flatten stored none (it came with 2.1)
        refs: list[str] = []
        _history(entry.get("inbound_nodes", []), refs)
        nodes = [[[r, 1 if r in nested else 0, 0, {}] for r in refs]] if refs else []
        layers.append({"name": name, "class_name": cls, "config": config, "inbound_nodes": nodes})
    ins = [[t[0], 0, 0] for t in _histories(cfg3["input_layers"])]
    outs = [[t[0], 1 if t[0] in nested else 0, 0] for t in _histories(cfg3["output_layers"])]
    return {"class_name": "Model", "config": {"name": model.name, "layers": layers, "input_layers": ins,
                                              "output_layers": outs}}  # fmt: skip


def _histories(obj: Any) -> list[list[Any]]:
    """[name, node, tensor] triples of Keras 3's input_layers/output_layers (a triple or a list of them)."""
    if isinstance(obj, list) and len(obj) == 3 and isinstance(obj[0], str):
        return [obj]
    return [t for item in obj for t in _histories(item)]


def _keras2_weights(layer, frozen: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, np.ndarray]]:
    """(Keras 2 weight name, value) of one outer layer, in Keras 2's order.

    A nested model lists its trainable weights first, then its non-trainable ones (Keras 2.0.8's
    ``Container.weights``); the weights of an inner layer named in `frozen` (``layer.trainable = False``) are all
    non-trainable, so they move after every trainable weight, in layer order.
    """
    if hasattr(layer, "layers"):
        inner = [lay for lay in _all_layers(layer)]
        trainable = [(f"{lay.name}/{v.name}:0", v) for lay in inner if lay.name not in frozen
                     for v in lay.weights if v.trainable]  # fmt: skip
        rest = [(f"{lay.name}/{v.name}:0", v) for lay in inner
                for v in lay.weights if lay.name in frozen or not v.trainable]  # fmt: skip
        pairs = trainable + rest
    else:
        pairs = [(f"{layer.name}/{v.name}:0", v) for v in layer.weights]
    return [(name, np.asarray(v.numpy(), dtype=np.float32)) for name, v in pairs]


# ------------------------------------------------------------------------------------------------ Keras 1, Theano
_K1_WEIGHT = {"kernel": "W", "bias": "b", "gamma": "gamma", "beta": "beta", "moving_mean": "running_mean",
              "moving_variance": "running_std"}  # fmt: skip
_K1_ORDERING = {"channels_last": "tf", "channels_first": "th"}


def keras1_layer(class_name: str, cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A Keras 2 layer (class, config) as Keras 1.2 stored it (the inverse of Keras 2's legacy interfaces)."""
    cfg = dict(cfg)
    rename = {"use_bias": "bias", "units": "output_dim", "rate": "p", "strides": "subsample",
              "padding": "border_mode", "data_format": "dim_ordering", "filters": "nb_filter"}  # fmt: skip
    if class_name == "Add":
        return "Merge", {"name": cfg["name"], "mode": "sum", "concat_axis": -1, "dot_axes": -1,
                         "output_shape": None, "output_mask": None, "arguments": {}}  # fmt: skip
    if class_name == "BatchNormalization":
        return class_name, {"name": cfg["name"], "trainable": True, "epsilon": cfg["epsilon"], "mode": 0,
                            "axis": cfg["axis"], "momentum": cfg["momentum"], "gamma_regularizer": None,
                            "beta_regularizer": None}  # fmt: skip
    if class_name == "ZeroPadding2D":
        (t, b), (l, r) = cfg["padding"]  # noqa: E741
        cfg["padding"] = [t, l] if (t, l) == (b, r) else [t, b, l, r]
        rename.pop("padding")
    if class_name == "Conv2D":
        cfg["nb_row"], cfg["nb_col"] = cfg.pop("kernel_size")
        dilation = cfg.pop("dilation_rate", [1, 1])
        cfg["init"], cfg["W_regularizer"], cfg["b_regularizer"] = "glorot_uniform", None, None
        if list(dilation) != [1, 1]:
            cfg["atrous_rate"] = list(dilation)
            class_name = "AtrousConvolution2D"
        else:
            class_name = "Convolution2D"
    new = {rename.get(key, key): value for key, value in cfg.items()}
    if "dim_ordering" in new:
        new["dim_ordering"] = _K1_ORDERING[new["dim_ordering"]]
    return class_name, new


def keras1_config(config: dict[str, Any]) -> dict[str, Any]:
    """A Keras 2 functional config (`keras2_config`) as Keras 1.2 stored it: Keras 1 layers, 3-element node refs."""
    layers = []
    for entry in config["config"]["layers"]:
        cls, cfg = entry["class_name"], entry["config"]
        if cls == "Model":
            cfg = keras1_config(entry)["config"]
        elif cls != "InputLayer":
            cls, cfg = keras1_layer(cls, cfg)
        nodes = [[ref[:3] for ref in node] for node in entry["inbound_nodes"]]
        layers.append({"name": entry["name"], "class_name": cls, "config": cfg, "inbound_nodes": nodes})
    return {"class_name": "Model", "config": {**config["config"], "layers": layers}}


def channels_first_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config of the same model built with image_data_format "channels_first" (as Theano users did)."""
    layers = []
    for entry in config["config"]["layers"]:
        cfg = dict(entry["config"])
        if entry["class_name"] == "Model":
            cfg = channels_first_config(entry)["config"]
        elif entry["class_name"] == "InputLayer":
            n, h, w, c = cfg["batch_input_shape"]
            cfg["batch_input_shape"] = [n, c, h, w]
        elif entry["class_name"] == "BatchNormalization":
            cfg["axis"] = 1
        if "data_format" in cfg:
            cfg["data_format"] = "channels_first"
        layers.append({**entry, "config": cfg})
    return {"class_name": "Model", "config": {**config["config"], "layers": layers}}


def _chw_rows(model) -> dict[str, tuple[int, int, int]]:
    """Dense layers fed by a Flatten of a feature map -> that map's (H, W, C) (their kernel rows are reordered)."""
    out = {}
    for layer in _all_layers(model):
        if layer.__class__.__name__ == "Dense":
            src = layer.input._keras_history[0]
            if src.__class__.__name__ == "Flatten" and len(src.input.shape) == 4:
                out[layer.name] = tuple(int(d) for d in src.input.shape[1:])
    return out


def _to_theano(name: str, value: np.ndarray, chw: dict[str, tuple[int, int, int]]) -> np.ndarray:
    """A tensor as a channels_first Theano model stores it (Keras 2: kernels HWIO, trained for true convolution)."""
    layer, kind = name.split("/")[0], name.split("/")[-1].split(":")[0]
    if kind == "kernel" and value.ndim == 4:
        return value[::-1, ::-1].copy()  # true convolution: the TF kernel rotated 180 degrees
    if kind == "kernel" and layer in chw:
        h, w, c = chw[layer]  # rows (H, W, C) -> (C, H, W): Keras' convert_dense_weights_data_format
        return np.ascontiguousarray(value.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1))
    return value


def _to_keras1(name: str, value: np.ndarray, channels_first: bool) -> tuple[str, np.ndarray]:
    """("conv1_W:0", value) of a Keras 2 tensor ("conv1/kernel:0"): Keras 1 names, 'th' kernels (out, in, h, w)."""
    layer, kind = name.split("/")[0], name.split("/")[-1].split(":")[0]
    if kind == "kernel" and value.ndim == 4 and channels_first:
        value = np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    return f"{layer}_{_K1_WEIGHT[kind]}:0", value


def save_keras2_h5(
    model,
    path: Path,
    *,
    config: dict[str, Any] | None = None,
    drop: set[str] = frozenset(),
    reshape: dict[str, tuple[int, ...]] | None = None,
    scope_suffix: str = "",
    frozen: set[str] | frozenset[str] = frozenset(),
    keras1: bool = False,
    theano: bool = False,
) -> Path:
    """Write `model` in the Keras 2.0.8 full-model HDF5 layout (or a variant of it, see the module docstring).

    Args:
        config: a (modified) Keras 2 config to store instead of the model's own (malformed-file tests).
        drop: weight names to leave out (malformed-file tests).
        reshape: weight name -> shape to store a wrong-shaped tensor (malformed-file tests).
        scope_suffix: appended to every weight's layer scope ("_1": ``dense_1_1/kernel:0`` in group ``dense_1``,
            as TensorFlow names variables when a layer name's scope was used before in the session).
        frozen: inner layers of a nested model that were frozen (their weights listed after the trainable ones).
        keras1: a Keras 1.2.2 file (Keras 1 config, ``conv1_W:0`` names).
        theano: a Theano file (backend "theano", channels_first config, kernels flipped for true convolution).
    """
    import h5py

    config = config or keras2_config(model)
    if theano:
        config = channels_first_config(config)
    if keras1:
        config = keras1_config(config)
    chw = _chw_rows(model) if theano else {}
    reshape = reshape or {}
    version = b"1.2.2" if keras1 else b"2.0.8"
    backend = b"theano" if theano else b"tensorflow"
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = version
        f.attrs["backend"] = backend
        f.attrs["model_config"] = json.dumps(config).encode("utf8")
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([layer.name.encode("utf8") for layer in model.layers])
        g.attrs["backend"] = backend
        g.attrs["keras_version"] = version
        for layer in model.layers:
            lg = g.create_group(layer.name)
            weights = []
            for name, value in _keras2_weights(layer, frozen):
                if name in drop:
                    continue
                if name in reshape:
                    value = np.zeros(reshape[name], dtype=np.float32)
                if theano:
                    value = _to_theano(name, value, chw)
                if keras1:
                    name, value = _to_keras1(name, value, channels_first=theano)
                elif scope_suffix:
                    scope, _, rest = name.rpartition("/")
                    name = f"{scope}{scope_suffix}/{rest}"
                weights.append((name, value))
            lg.attrs["weight_names"] = np.array([n.encode("utf8") for n, _ in weights]) if weights else []
            for name, value in weights:
                lg.create_dataset(name, data=value)
    return path


def keras_logits(model, x_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) of a Keras model whose output is Dense(softmax) or Activation(softmax).

    Both come from Keras: the sub-model up to the output layer's input, then the output layer itself.
    """
    k = keras()
    last = model.layers[-1]
    pre = k.Model(model.inputs, last.input)
    feats = pre(x_nhwc)
    probs = k.ops.convert_to_numpy(last(feats))
    feats = k.ops.convert_to_numpy(feats)
    if last.__class__.__name__ == "Dense":
        kernel, bias = (np.asarray(w) for w in last.get_weights())
        return feats @ kernel + bias, probs
    return feats, probs
