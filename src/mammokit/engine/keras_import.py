"""Import a released Keras model (Shen et al.; Keras 2, also Keras 1/Theano/Keras 3 .h5) into a mammokit run folder.

`import_keras(path, out, options)` reads the HDF5 file with h5py (`io.keras_h5`), parses its stored model
config (`models.keras_graph`), builds the equivalent PyTorch network (`models.keras_net.KerasGraphNet`),
copies every tensor into it (all used exactly once, every parameter filled), and writes ``model.json`` +
``model.safetensors``. The run's `PreprocessSpec` and normalisation reproduce the original input pipeline
(docs/decisions.md, "Imported Keras models"): the whole mammogram (no breast crop, no flip to a canonical
side) resized without keeping the aspect ratio to the stored input size, the 16-bit intensities multiplied
by the rescale factor 0.003891 (= 255/65535, so 0..255) minus one featurewise mean, replicated to 3 channels
inside the network.

In mammokit's terms the model input is ``(u16/65535 - pixel_mean) / pixel_std`` with
``pixel_std = 1 / (65535 * rescale)`` and ``pixel_mean = mean * pixel_std``, which is exactly
``u16 * rescale - mean``.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mammokit.config import ConfigError
from mammokit.constants import PATCH_CLASSES_5, WHOLE_IMAGE_CLASSES
from mammokit.io.keras_h5 import KerasImportError, read_keras_h5
from mammokit.models.keras_graph import DEFAULT_PATCH_SIZE, DEFAULT_WHOLE_SIZE
from mammokit.preprocess import PreprocessSpec
from mammokit.run import InputSpec, ModelCard, save_run
from mammokit.utils.hashing import file_sha256

log = logging.getLogger(__name__)

RESCALE_16BIT = 0.003891  # the README's rescale factor for 16-bit PNG (255/65535, rounded as the authors did)
MEAN_DDSM = 52.18  # featurewise mean of the CBIS-DDSM 1152x896 training images (fprop script, notebook)
MEAN_INBREAST = 44.33  # featurewise mean of INbreast (train_image_clf_inbreast.sh)
# The original 3-class patch models put malignant at 1 and benign at 2 (docs/decisions.md, "Imported Keras models").
PATCH_LABELS_3 = ("background", "malignant", "benign")


@dataclass
class KerasImportOptions:
    """Settings of the import that the file does not record (defaults = the most likely original values)."""

    task: Literal["auto", "whole", "patch"] = "auto"  # auto: a nested trunk model or 2 outputs = whole image
    input_size: tuple[int, int] | None = None  # (H, W) instead of the stored input size
    mean: float | None = None  # featurewise mean on the 0..255 scale; None: 44.33 if "inbreast" in the name else 52.18
    rescale: float = RESCALE_16BIT  # 16-bit value -> 0..255
    interpolation: Literal["area", "bilinear", "bicubic"] = "bicubic"  # the original resize was bicubic
    labels: list[str] | None = None  # output unit i is labels[i]; None: by task and class count
    positive_labels: list[str] | None = None  # which labels mean malignant
    extra_notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class KerasImportResult:
    run_dir: Path
    card: ModelCard
    counts: dict[str, int]
    n_layers: int
    n_parameters: int


def default_mean(path: Path) -> float:
    """The featurewise mean the released file was trained with, guessed from its name (INbreast vs DDSM)."""
    return MEAN_INBREAST if "inbreast" in path.name.lower() else MEAN_DDSM


def _labels(task: str, n_out: int, options: KerasImportOptions) -> tuple[list[str], list[str]]:
    if options.labels is not None:
        labels = list(options.labels)
        if len(labels) != n_out:
            raise KerasImportError(f"--labels names {len(labels)} classes but the model has {n_out} outputs")
    elif task == "whole" and n_out == 2:
        labels = list(WHOLE_IMAGE_CLASSES)  # the original's class 0 = neg, 1 = pos
    elif task == "patch" and n_out == 5:
        labels = list(PATCH_CLASSES_5)  # alphabetical folder order (Keras flow_from_directory); not recorded
    elif task == "patch" and n_out == 3:
        labels = list(PATCH_LABELS_3)
    else:
        raise KerasImportError(f"a {task} model with {n_out} outputs: name its classes with --labels a,b,...")
    if options.positive_labels is not None:
        positive = list(options.positive_labels)
    else:
        positive = [lab for lab in labels if "malignant" in lab]
    unknown = [p for p in positive if p not in labels]
    if unknown or not positive:
        raise KerasImportError(f"positive labels {positive} must be a non-empty subset of the labels {labels}")
    return labels, positive


def import_keras(path: str | Path, out: str | Path, options: KerasImportOptions | None = None) -> KerasImportResult:
    """Convert a Keras full-model ``.h5`` file into a mammokit run folder at `out`.

    Keras 2 files (TensorFlow or Theano backend), Keras 1 files and Keras 3 legacy ``.h5`` files are read
    (`models.keras_graph`); a Keras 3 ``.keras`` archive is refused with what to do. A fully convolutional file
    that stores no input size takes `options.input_size`, else 1152x896 (whole) / 224x224 (patch), recorded in
    the card's ``notes["input_size_source"]`` and logged.

    Raises:
        KerasImportError: the file cannot be read, holds an unsupported layer, or its weights do not fit;
            the message names the layer.
        FileExistsError: `out` already holds a model.
    """
    from mammokit.models.keras_graph import parse_keras_config
    from mammokit.models.keras_net import KerasGraphNet, load_keras_weights

    options = options or KerasImportOptions()
    path, out = Path(path), Path(out)
    if (out / "model.json").exists():
        raise FileExistsError(f"{out} already holds a model (model.json); choose another --out")
    if path.is_file() and zipfile.is_zipfile(path):
        raise KerasImportError(
            f"{path}: a Keras 3 .keras archive (zip), not an HDF5 file. Re-save the model as .h5: with Keras 3, "
            "model.save('model.h5') (legacy HDF5, which import-keras reads); or with Keras 2 / tf_keras"
        )
    keras_file = read_keras_h5(path)

    def parse(default_size: tuple[int, int]) -> dict[str, Any]:
        return parse_keras_config(keras_file.model_config, options.input_size, default_size=default_size,
                                  backend=keras_file.backend, keras_version=keras_file.keras_version)  # fmt: skip

    # A fully convolutional file with no stored size takes the task's default size; the task may only be known
    # once the graph is parsed (auto), so a patch model parsed at the whole-image default is parsed again.
    graph = parse(DEFAULT_PATCH_SIZE if options.task == "patch" else DEFAULT_WHOLE_SIZE)
    n_out = graph["layers"][[s["name"] for s in graph["layers"]].index(graph["output"])]["shape"][0]
    task = options.task
    if task == "auto":
        task = "whole" if graph["nested"] or n_out == 2 else "patch"
    if graph["input"]["size_source"] == "default" and task == "patch" and options.task != "patch":
        graph = parse(DEFAULT_PATCH_SIZE)
    if graph["input"]["size_source"] == "default":
        log.warning(
            "%s stores no input size and is fully convolutional: using the default %dx%d of a %s model "
            "(pass --input-size HxW for another size)",
            path.name, graph["input"]["height"], graph["input"]["width"], task,
        )  # fmt: skip
    labels, positive = _labels(task, n_out, options)
    import torch

    with torch.device("meta"):  # no random init: every parameter is overwritten from the file (checked)
        net = KerasGraphNet(graph, num_classes=n_out, in_chans=1, task=task)
    net = net.to_empty(device="cpu")
    for name, buf in net.named_buffers():
        if name.endswith("num_batches_tracked"):
            buf.zero_()
    counts = load_keras_weights(net, keras_file.weights)
    net.eval()

    mean = options.mean if options.mean is not None else default_mean(path)
    if options.rescale <= 0:
        raise KerasImportError(f"--rescale must be positive, got {options.rescale}")
    height, width = graph["input"]["height"], graph["input"]["width"]
    scale = 65535.0 * options.rescale  # u16/65535 -> the original 0..255 scale
    provenance = {
        "source": "keras import",
        "file": path.name,
        "rescale": options.rescale,
        "featurewise_mean": mean,
        "channels": f"grayscale replicated to {graph['input']['channels']} channels inside the network",
    }
    preprocess = PreprocessSpec(
        height=height,
        width=width,
        crop_breast=False,  # the original fed the whole mammogram (docs/decisions.md)
        canonical_side="none",  # and never mirrored right breasts
        aspect="stretch",  # resized to H x W without keeping the aspect ratio
        interpolation=options.interpolation,
        voi="none",  # raw stored values, as a DICOM -> 16-bit PNG conversion keeps them
        intensity="none",  # the stored bit range maps to 0..65535 (16-bit PNG); no per-image stretch
        extra={"keras_import": provenance},
    )
    try:
        preprocess.validate()
    except ConfigError as exc:
        raise KerasImportError(f"input size: {exc}") from None
    card = ModelCard(
        task=task,
        arch="keras_graph",
        arch_kwargs=net.arch_kwargs,
        input=InputSpec(
            height=height,
            width=width,
            channels=1,
            pixel_mean=mean / scale,
            pixel_std=1.0 / scale,
            preprocess=preprocess,
        ),
        labels=labels,
        positive_labels=positive,
        threshold=0.5,
        threshold_rule="default 0.5 (imported model; no validation data seen by mammokit)",
        notes={
            "init": "keras import",
            "keras_file": path.name,
            "keras_file_sha256": file_sha256(path),
            "keras_version": keras_file.keras_version,
            "keras_backend": keras_file.backend,
            "tensors_used": counts["tensors"],
            "trunk_output": graph.get("cut"),
            "trunk_rule": graph.get("cut_rule"),
            "input_size_source": {
                "file": "stored in the file",
                "--input-size": "--input-size",
                "default": f"default for a {task} model (the file stores none)",
            }[graph["input"].get("size_source", "file")],
            "licence": "released weights: free for non-commercial use (Shen et al.); check before other use",
            **options.extra_notes,
        },
    )
    save_run(out, net, card)
    n_params = sum(p.numel() for p in net.parameters())
    log.info("imported %s -> %s (%d tensors, %d parameters)", path.name, out, counts["tensors"], n_params)
    return KerasImportResult(out, card, counts, len(graph["layers"]), n_params)
