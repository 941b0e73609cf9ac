"""Write the authors' Keras 2 model families with **real Keras 2** (``tf_keras`` 2.17 on TensorFlow 2.17, CPU) and
Keras' own output on a fixed input beside each file: the independent reference of ``tests/test_keras2_reference.py``
(marker ``keras2ref``, ``make test-keras2``).

Run it with a Python that has ``tensorflow-cpu`` and ``tf_keras`` (no torch, no mammokit)::

    .venv-tf/bin/python tests/keras2_reference_writer.py OUT_DIR [--only NAME ...]

For every model NAME it writes ``OUT_DIR/NAME.h5`` (``model.save(..., save_format="h5")``, the full-model HDF5
file the authors released), ``OUT_DIR/NAME.npz`` (``x``: the input batch as mammokit feeds it, (B, 1, H, W)
float32; ``probs``: Keras' ``model.predict`` on it; ``logits``: the output layer's input, through Keras, times its
kernel plus bias) and one entry in ``OUT_DIR/manifest.json`` (what the test expects of the import).

Everything is seeded: weights and BatchNorm statistics are drawn with NumPy (He-scaled kernels so activations stay
O(1) through ResNet50; moving variances 0.5-2, so a wrong mapping shows), then the logit layer(s) are scaled so
that the reference logits lie within +-2 of their row mean (probabilities away from 0 and 1, where a difference
would not show); the input is uniform in -60..200 (the original's 0..255 minus the featurewise mean), replicated
to 3 channels for the ImageNet trunks.

The families (small input sizes; the layer types and wiring are the released ones, some top widths are reduced):

* ``resnet50_512-512-1024x2``: whole image; nested keras.applications 2.0.8 ResNet50 trunk (ZeroPadding2D stem),
  the paper's "[512-512-1024]x2" top, GAP, Dropout, Dense(2, softmax); 96x64.
* ``vgg16_512x1``: whole image; nested VGG16 trunk, the "512x1" top (Conv3x3 512, BN, ReLU, MaxPool); 96x64.
* ``resnet50_patch``: flat ResNet50 patch classifier, avg_pool 7x7, GAP, Dropout, Dense(5, softmax); 224x224.
* ``vgg16_patch``: flat VGG16 patch classifier, GAP, Dropout, Dense(3, softmax); 64x64.
* ``yaroslavnet``: whole image, 1 channel; YaroslavNet (six [Conv-BN-ReLU]x2-MaxPool blocks) with every
  BatchNormalization auto-named by tf_keras, heatmap (Dense 5 per location) -> max-pool -> FC16-8 + shortcut ->
  softmax; 512x448.
* ``vgg16_hybrid_adam``: whole image; VGG16 trunk + a "[64-64-128]x2" ResNet top, compiled with Adam, trained one
  step and saved with ``include_optimizer=True`` (``optimizer_weights``, ``training_config``); 96x64.
* ``resnet50_frozen_same_stem``: whole image; the keras.applications 2.0.7+ stem ("same" 7x7/2 conv1, no padding
  layer), conv1 .. stage 3 frozen (``trainable = False``: their weights follow every trainable one in the nested
  model's weight list), per-model name counters (``clear_session`` between trunk and top: both have ``input_1``,
  ``activation``, ...), tf_keras' own auto names; "[64-64-128]x2" top; 96x64.
* ``flat_prt_resnet50``: the authors' older flat design: patch layers renamed ``prt_*``, the top in the same
  model, no stored input size (None x None); "[64-64-128]x2" top; reference at 96x64.
* ``graph_scope_suffix``: written in TF1 graph mode (``disable_eager_execution``, as Keras 2.0.x on TensorFlow 1
  ran) after another model used the same layer names in the session, so every variable scope has TensorFlow's
  suffix (``dense_1_1/kernel:0`` in group ``dense_1``); a small ResNet-like whole-image model, 64x64. Written by a
  second process of this script (``--graph-mode``): graph mode is process-wide.
* ``applications_resnet50``: ``tf_keras.applications.ResNet50(weights=None, include_top=False)`` itself (its
  current names: ``conv1_pad``, ``conv2_block1_1_conv``, ...) as the nested trunk + GAP + Dense(2); 96x64.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np

BATCH = 2
EAGER = [
    "resnet50_512-512-1024x2",
    "vgg16_512x1",
    "resnet50_patch",
    "vgg16_patch",
    "yaroslavnet",
    "vgg16_hybrid_adam",
    "resnet50_frozen_same_stem",
    "flat_prt_resnet50",
    "applications_resnet50",
]
GRAPH = ["graph_scope_suffix"]
ALL = EAGER + GRAPH

k = None  # tf_keras, imported in main()


class Names:
    """Layer names. ``explicit``: Keras 2.0.8's (``activation_1``, ``add_1``, one counter per kind); else None,
    so that tf_keras names the layer itself (``activation``, ``activation_1``, ...). `prefix` goes before every
    explicit and keras.applications name (the flat design's ``prt_``)."""

    def __init__(self, explicit: bool = True, prefix: str = "") -> None:
        self.explicit, self.prefix, self.count = explicit, prefix, {}

    def __call__(self, kind: str) -> str | None:
        if not self.explicit:
            return None
        self.count[kind] = self.count.get(kind, 0) + 1
        return f"{self.prefix}{kind}_{self.count[kind]}"

    def p(self, name: str) -> str:
        return f"{self.prefix}{name}"


# ------------------------------------------------------------------------------------------------ builders
def resnet50_trunk(x, names: Names, stem: str = "pad"):
    """keras.applications ResNet50 (2.0.8 names) up to res5c's ReLU; stem "same" = 2.0.7-2.1.x."""
    L = k.layers

    def conv_bn(x, filters, ks, stage, block, branch, strides=1, padding="valid", relu=True):
        x = L.Conv2D(filters, ks, strides=strides, padding=padding, name=names.p(f"res{stage}{block}_branch{branch}"))(
            x
        )
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
    stages = [(3, [64, 64, 256], 1), (4, [128, 128, 512], 2), (6, [256, 256, 1024], 2), (3, [512, 512, 2048], 2)]
    for stage, (n, f, s) in enumerate(stages, start=2):
        for i in range(n):
            x = unit(x, f, stage, "abcdef"[i], strides=s if i == 0 else None)
    return x


def vgg16_trunk(x, names: Names):
    L = k.layers
    for b, (n, f) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
        for i in range(1, n + 1):
            x = L.Conv2D(f, 3, padding="same", activation="relu", name=names.p(f"block{b}_conv{i}"))(x)
        x = L.MaxPooling2D(2, strides=2, name=names.p(f"block{b}_pool"))(x)
    return x


def yaroslav_trunk(x, names: Names):
    """Six blocks of [Conv3x3 same -> BN -> ReLU] x2 -> MaxPool 2x2 (32..512 filters); BN and ReLU unnamed."""
    L = k.layers
    for b, f in enumerate([32, 64, 128, 256, 256, 512], start=1):
        for i in (1, 2):
            x = L.Conv2D(f, 3, padding="same", name=names.p(f"block{b}_conv{i}"))(x)
            x = L.BatchNormalization()(x)  # auto-named by tf_keras: batch_normalization, batch_normalization_1, ...
            x = L.Activation("relu")(x)
        x = L.MaxPooling2D(2, name=names.p(f"block{b}_pool"))(x)
    return x


def resnet_top(x, names: Names, depths=(512, 512), reps=(2, 2), enlarge=2):
    """The "[512-512-1024]x2" top: per block, post-activation bottleneck units (first unit stride 2)."""
    L = k.layers

    def cbr(x, f, ks, strides=1, relu=True, padding="same"):
        x = L.Conv2D(f, ks, strides=strides, padding=padding, name=names("conv2d"))(x)
        x = L.BatchNormalization(name=names("batch_normalization"))(x)
        if relu:
            x = L.Activation("relu", name=names("activation"))(x)
            x = L.Dropout(0.0, name=names("dropout"))(x)
        return x

    for d, r in zip(depths, reps, strict=True):
        for u in range(r):
            y = cbr(x, d, 1, strides=2 if u == 0 else 1)
            y = cbr(y, d, 3)
            y = cbr(y, d * enlarge, 1, relu=False)
            shortcut = cbr(x, d * enlarge, 1, strides=2, relu=False, padding="valid") if u == 0 else x
            x = L.Add(name=names("add"))([y, shortcut])
            x = L.Activation("relu", name=names("activation"))(x)
    return x


def vgg_top(x, names: Names, depths=(512,)):
    L = k.layers
    for d in depths:
        x = L.Conv2D(d, 3, padding="same", name=names("conv2d"))(x)
        x = L.BatchNormalization(name=names("batch_normalization"))(x)
        x = L.Activation("relu", name=names("activation"))(x)
        x = L.MaxPooling2D(2, name=names("max_pooling2d"))(x)
    return x


def classifier(x, names: Names, n: int = 2):
    L = k.layers
    x = L.GlobalAveragePooling2D(name=names("global_average_pooling2d"))(x)
    x = L.Dropout(0.5, name=names("dropout"))(x)
    return L.Dense(n, activation="softmax", name=names("dense"))(x)


def nested(trunk_fn, size, channels, top_fn, names: Names, *, reset_names: bool = False):
    """Input -> nested trunk Model (the original's patch -> whole conversion) -> top (a callable on (x, names))."""
    tin = k.Input((*size, channels), name=names("input"))
    trunk = k.Model(tin, trunk_fn(tin, names), name=names("model"))
    if reset_names:  # the top built in another session: tf_keras' name counters start again
        k.backend.clear_session()
        names = Names(names.explicit)
    inp = k.Input((*size, channels), name=names("input"))
    return k.Model(inp, top_fn(trunk(inp), names), name=names("model"))


def build(name: str):
    """(model, (H, W), channels, expected) of one family; `expected` goes into the manifest."""
    L = k.layers
    if name == "resnet50_512-512-1024x2":
        model = nested(resnet50_trunk, (96, 64), 3, lambda x, n: classifier(resnet_top(x, n), n), Names())
        return model, (96, 64), 3, {"task": "whole", "trunk_output": "activation_49", "trunk_rule": "nested"}
    if name == "vgg16_512x1":
        model = nested(vgg16_trunk, (96, 64), 3, lambda x, n: classifier(vgg_top(x, n), n), Names())
        return model, (96, 64), 3, {"task": "whole", "trunk_output": "block5_pool", "trunk_rule": "nested"}
    if name in ("resnet50_patch", "vgg16_patch"):
        names = Names()
        size = (224, 224) if name == "resnet50_patch" else (64, 64)
        inp = k.Input((*size, 3), name=names("input"))
        if name == "resnet50_patch":
            x = L.AveragePooling2D(7, name="avg_pool")(resnet50_trunk(inp, names))
            out, cut = classifier(x, names, 5), "avg_pool"
        else:
            out, cut = classifier(vgg16_trunk(inp, names), names, 3), "block5_pool"
        return k.Model(inp, out, name=names("model")), size, 3, {"task": "patch", "trunk_output": cut}
    if name == "yaroslavnet":

        def top(x, names):
            x = L.AveragePooling2D(3, strides=1)(x)
            heat = L.Dense(5, activation="relu")(x)  # per location: the heatmap
            flat = L.Flatten()(L.MaxPooling2D(5)(heat))
            y = flat
            for units in (16, 8):
                y = L.Activation("relu")(L.BatchNormalization()(L.Dense(units)(y)))
            return L.Activation("softmax")(L.Add()([L.Dense(2)(y), L.Dense(2)(flat)]))

        model = nested(yaroslav_trunk, (512, 448), 1, top, Names(explicit=False))
        return model, (512, 448), 1, {"task": "whole", "trunk_output": "block6_pool", "trunk_rule": "nested"}
    if name == "vgg16_hybrid_adam":
        top = lambda x, n: classifier(resnet_top(x, n, depths=(64, 64)), n)  # noqa: E731
        model = nested(vgg16_trunk, (96, 64), 3, top, Names())
        return model, (96, 64), 3, {"task": "whole", "trunk_output": "block5_pool", "trunk_rule": "nested"}
    if name == "resnet50_frozen_same_stem":
        top = lambda x, n: classifier(resnet_top(x, n, depths=(64, 64)), n)  # noqa: E731
        trunk = lambda x, n: resnet50_trunk(x, n, stem="same")  # noqa: E731
        model = nested(trunk, (96, 64), 3, top, Names(explicit=False), reset_names=True)
        inner = next(layer for layer in model.layers if isinstance(layer, k.Model))
        for layer in inner.layers:
            if layer.name.startswith(("conv1", "bn_conv1", "res2", "bn2", "res3", "bn3")):
                layer.trainable = False
        # the trunk's last ReLU is tf_keras' 49th auto-named activation of its session: "activation_48"
        return model, (96, 64), 3, {"task": "whole", "trunk_output": inner.layers[-1].name, "trunk_rule": "nested"}
    if name == "flat_prt_resnet50":
        names = Names(prefix="prt_")
        inp = k.Input((None, None, 3), name=names("input"))
        x = resnet50_trunk(inp, names)
        top = Names()
        top.count = names.count  # the top's auto names go on counting, without the prefix
        out = classifier(resnet_top(x, top, depths=(64, 64)), top)
        model = k.Model(inp, out, name=top("model"))
        expected = {"task": "whole", "trunk_output": "prt_activation_49", "trunk_rule": "prt_", "input_size": [96, 64]}
        return model, (96, 64), 3, expected
    if name == "applications_resnet50":
        trunk = k.applications.ResNet50(weights=None, include_top=False, input_shape=(96, 64, 3))
        inp = k.Input((96, 64, 3))
        x = L.GlobalAveragePooling2D()(trunk(inp))
        out = L.Dense(2, activation="softmax")(L.Dropout(0.5)(x))
        return k.Model(inp, out), (96, 64), 3, {"task": "whole", "trunk_output": trunk.layers[-1].name}
    if name == "graph_scope_suffix":
        # another model with the same layer names first: every scope of the saved one gets TensorFlow's "_1"
        small_resnet(Names())
        model = small_resnet(Names())
        return model, (64, 64), 3, {"task": "whole", "trunk_output": "res2a_branch2b", "trunk_rule": "nested"}
    raise ValueError(f"unknown model {name!r}; known: {', '.join(ALL)}")


def small_resnet(names: Names):
    """Nested ResNet-like stem (ZeroPadding, conv1 7x7/2, BN, ReLU, MaxPool, stride-2 "same" conv) -> one
    "[8-8-16]x1" unit -> GAP -> Dropout -> Dense(2, softmax); 64x64."""
    L = k.layers

    def trunk(x, n):
        x = L.ZeroPadding2D((3, 3), name=n("zero_padding2d"))(x)
        x = L.Conv2D(8, 7, strides=2, name="conv1")(x)
        x = L.BatchNormalization(axis=3, name="bn_conv1")(x)
        x = L.Activation("relu", name=n("activation"))(x)
        x = L.MaxPooling2D(3, strides=2, name=n("max_pooling2d"))(x)
        return L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="res2a_branch2b")(x)

    return nested(trunk, (64, 64), 3, lambda x, n: classifier(resnet_top(x, n, depths=(8,), reps=(1,)), n), names)


# ------------------------------------------------------------------------------------------------ weights, output
def leaf_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from leaf_layers(layer)
        else:
            yield layer


def randomise(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in leaf_layers(model):
        values = []
        for w in layer.weights:
            shape, kind = tuple(w.shape), w.name.split("/")[-1].split(":")[0]
            if kind == "kernel":
                value = rng.normal(0.0, np.sqrt(1.0 / int(np.prod(shape[:-1]))), shape)
            elif kind == "moving_variance":
                value = rng.uniform(0.5, 2.0, shape)
            elif kind == "gamma":
                value = rng.uniform(0.5, 1.5, shape)
            else:  # bias, beta, moving_mean
                value = rng.normal(0.0, 0.1, shape)
            values.append(value.astype(np.float32))
        if values:
            layer.set_weights(values)


def reference(model, size, channels, seed: int) -> dict[str, np.ndarray]:
    """x (B, 1, H, W) as mammokit feeds it, Keras' probabilities and logits on it."""
    x = np.random.default_rng(1000 + seed).uniform(-60.0, 200.0, (BATCH, 1, *size)).astype(np.float32)
    x_keras = np.repeat(x.transpose(0, 2, 3, 1), channels, axis=-1)
    probs = model.predict(x_keras, batch_size=BATCH, verbose=0)
    last = model.layers[-1]
    feats = k.Model(model.inputs, last.input).predict(x_keras, batch_size=BATCH, verbose=0)
    if last.__class__.__name__ == "Dense":
        kernel, bias = last.get_weights()
        logits = feats.astype(np.float64) @ kernel.astype(np.float64) + bias
    else:  # Activation(softmax) after an Add
        logits = feats
    return {"x": x, "probs": np.asarray(probs, np.float32), "logits": np.asarray(logits, np.float32)}


def logit_layers(model) -> list:
    """The Dense layer(s) whose output is the logits: the output layer, or the Dense layers an Add before a softmax
    Activation sums (YaroslavNet's shortcut)."""
    last = model.layers[-1]
    if last.__class__.__name__ == "Dense":
        return [last]
    add = last.input._keras_history.layer
    return [t._keras_history.layer for t in add.input]


def spread_logits(model, size, channels, seed: int, target: float = 2.0) -> None:
    """Scale the logit layers so that the reference logits lie within +-`target` of their row mean: random deep
    networks give logits of tens to hundreds, whose softmax is 0 or 1 and would compare nothing."""
    logits = reference(model, size, channels, seed)["logits"]
    spread = float(np.abs(logits - logits.mean(axis=1, keepdims=True)).max())
    if spread > 0:
        for layer in logit_layers(model):
            layer.set_weights([w * np.float32(target / spread) for w in layer.get_weights()])


def write(name: str, out: Path, seed: int) -> dict:
    t0 = time.perf_counter()
    k.backend.clear_session()
    np.random.seed(seed)
    import tensorflow as tf

    tf.random.set_seed(seed)
    model, size, channels, expected = build(name)
    randomise(model, seed)
    save_kwargs = {}
    if name == "vgg16_hybrid_adam":
        model.compile(optimizer=k.optimizers.Adam(1e-4), loss="categorical_crossentropy")
        rng = np.random.default_rng(seed)
        xs = rng.uniform(-60.0, 200.0, (2, *size, channels)).astype(np.float32)
        model.fit(xs, np.eye(2, dtype=np.float32), batch_size=2, epochs=1, verbose=0)
        save_kwargs["include_optimizer"] = True
    spread_logits(model, size, channels, seed)
    ref = reference(model, size, channels, seed)
    model.save(out / f"{name}.h5", save_format="h5", **save_kwargs)
    np.savez(out / f"{name}.npz", **ref)
    return {
        "name": name,
        "file": f"{name}.h5",
        "input_size": list(size),
        "channels": channels,
        "n_outputs": int(ref["probs"].shape[1]),
        "expected": expected,
        "graph_mode": name in GRAPH,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main(argv: list[str] | None = None) -> int:
    global k
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", nargs="+", choices=ALL, help="write only these models")
    parser.add_argument("--graph-mode", action="store_true", help=argparse.SUPPRESS)  # the second process
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = args.only or ALL
    import tensorflow as tf

    if args.graph_mode:
        tf.compat.v1.disable_eager_execution()
    import tf_keras

    k = tf_keras
    entries = []
    for name in wanted:
        if (name in GRAPH) == args.graph_mode:
            entries.append(write(name, args.out, seed=ALL.index(name)))
            print(f"wrote {name}.h5 ({entries[-1]['seconds']} s)", flush=True)
    if args.graph_mode:
        (args.out / "manifest-graph.json").write_text(json.dumps(entries, indent=1))
        return 0
    graph = [n for n in wanted if n in GRAPH]
    if graph:
        cmd = [sys.executable, __file__, str(args.out), "--graph-mode", "--only", *graph]
        subprocess.run(cmd, check=True)
        entries += json.loads((args.out / "manifest-graph.json").read_text())
        (args.out / "manifest-graph.json").unlink()
    manifest = {"tensorflow": tf.__version__, "tf_keras": k.__version__, "numpy": np.__version__, "models": entries}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
