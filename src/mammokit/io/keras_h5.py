"""Read a Keras 2 full-model HDF5 file (``model.save('x.h5')``) with h5py only: no TensorFlow, no Keras.

Layout written by Keras 2.0.x (and kept by Keras <= 2.x / tf.keras for ``.h5``)::

    /                      attrs: keras_version, backend, model_config (JSON), training_config (JSON)
    /model_weights         attrs: layer_names = [every layer of the outer model, in model order]
      /<layer name>        attrs: weight_names = ["<scope>/kernel:0", ...] (empty for weightless layers)
        /<scope>/kernel:0  dataset (Keras layout: conv kernels HWIO, dense kernels (in, out))

A nested model (the original whole-image networks wrap the patch model's trunk in a ``Model`` layer) is one
group whose weight names carry the inner layers' scopes (``conv1/kernel:0``, ``bn_conv1/gamma:0`` ...).
Attributes larger than HDF5's 64 KiB header limit are split by later Keras versions into ``name0``,
``name1``, ...; both forms are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class KerasImportError(ValueError):
    """A Keras HDF5 file cannot be imported; the message names the file, the layer and what to do."""


@dataclass
class StoredWeight:
    """One tensor of the file: the outer layer group it sits in, its stored name and its value."""

    group: str  # outer layer name (a nested model's name for its inner layers' weights)
    name: str  # stored weight name, e.g. "res2a_branch2a/kernel:0"
    value: np.ndarray

    @property
    def scope(self) -> str:
        """Layer scope of the name ("res2a_branch2a" for "model_1/res2a_branch2a/kernel:0"); the group if none."""
        parts = self.name.split("/")
        return parts[-2] if len(parts) >= 2 else self.group

    @property
    def kind(self) -> str:
        """ "kernel", "bias", "gamma", "beta", "moving_mean" or "moving_variance" (suffix ":0" removed)."""
        return self.name.split("/")[-1].split(":")[0]


@dataclass
class KerasFile:
    """Contents of a Keras full-model HDF5 file."""

    path: Path
    keras_version: str
    backend: str
    model_config: dict[str, Any]
    layer_names: list[str]
    weights: list[StoredWeight] = field(default_factory=list)


def _text(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf8")
    return str(value)


def _attr_list(attrs: Any, name: str) -> list[str]:
    """A list-valued attribute, joined from its chunks (name0, name1, ...) if Keras had to split it."""
    if name in attrs:
        values = attrs[name]
    else:
        values, i = [], 0
        while f"{name}{i}" in attrs:
            values.extend(attrs[f"{name}{i}"])
            i += 1
    return [_text(v) for v in np.atleast_1d(np.asarray(values))] if len(values) else []


def read_keras_h5(path: str | Path) -> KerasFile:
    """Read the model config and every stored tensor of a Keras 2 full-model ``.h5`` file.

    Raises:
        KerasImportError: the file is missing, not HDF5, holds weights only, or is malformed.
    """
    try:
        import h5py
    except ModuleNotFoundError as exc:  # pragma: no cover - h5py is a core dependency
        raise KerasImportError("reading Keras .h5 files needs h5py: pip install 'mammokit[keras]'") from exc
    path = Path(path)
    if not path.is_file():
        raise KerasImportError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise KerasImportError(
            f"{path}: not an HDF5 file; `mammokit import-keras` reads the Keras 2 full-model .h5 files released "
            "by the authors (SavedModel folders and Keras 3 .keras archives are not supported)"
        )
    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise KerasImportError(
                f"{path}: the file has no model_config attribute (a weights-only file from save_weights?); "
                "import-keras needs the full model saved with model.save()"
            )
        try:
            config = json.loads(_text(f.attrs["model_config"]))
        except json.JSONDecodeError as exc:
            raise KerasImportError(f"{path}: model_config is not valid JSON ({exc})") from None
        group = f.get("model_weights")
        if group is None:
            raise KerasImportError(f"{path}: the file has no model_weights group; it holds no trained weights")
        layer_names = _attr_list(group.attrs, "layer_names")
        weights: list[StoredWeight] = []
        for layer in layer_names:
            if layer not in group:
                raise KerasImportError(f"{path}: layer {layer!r} is listed in layer_names but has no weight group")
            g = group[layer]
            for name in _attr_list(g.attrs, "weight_names"):
                if name not in g:
                    raise KerasImportError(f"{path}: layer {layer!r}: weight {name!r} is listed but not stored")
                weights.append(StoredWeight(layer, name, np.asarray(g[name], dtype=np.float32)))
        keras_version = _text(f.attrs.get("keras_version", group.attrs.get("keras_version", "unknown")))
        backend = _text(f.attrs.get("backend", group.attrs.get("backend", "unknown")))
    return KerasFile(path, keras_version, backend, config, layer_names, weights)
